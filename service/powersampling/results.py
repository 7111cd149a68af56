"""What a request returns: plain values, shared by the API, the cache, the server and telemetry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SmcStats:
    """How a Power-SMC answer came about (method smc only).

    `ess_min` is the smallest effective sample size seen before a resampling decision, as a fraction
    of the particles (0..1]; `unique_ancestors` counts the distinct first-chunk ancestors of the final
    particle set of the last sweep run; `log_z_hat` is the log-normaliser estimate of the sweep whose
    answer was kept.
    """

    particles: int
    sweeps: int  # sweeps run (skipped ones excluded)
    accepted_sweeps: int  # particle independent MH: later sweeps whose answer was accepted
    resamples: int  # over all sweeps
    ess_min: float
    unique_ancestors: int
    log_z_hat: float


@dataclass(frozen=True, slots=True)
class ReasonResult:
    """One sample's answer and what it cost.

    For method smc the MCMC fields describe particle independent MH across sweeps: `mcmc_steps` is
    sweeps − 1, `accepted_steps` the accepted sweeps, `changed_steps` those that changed the answer,
    `skipped_steps` sweeps left out for the token budget; `tokens_spent` counts every particle's
    every generated token.
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    tokens_spent: int  # proposal tokens: initial extensions plus every MCMC proposal
    token_budget: int | None
    mcmc_steps: int
    accepted_steps: int
    changed_steps: int
    skipped_steps: int  # steps that did not fit the token budget
    acceptance_rate: float  # accepted / proposed MCMC steps (0 when none)
    change_rate: float  # steps that changed the sequence / proposed steps
    log_prob: float  # log p(x | prompt) at temperature 1
    latency_s: float
    model: str
    engine: str
    method: str
    alpha: float
    proposal_temperature: float
    seed: int  # the request's seed (drawn when none was given): re-send it to reproduce
    chain_index: int
    prompt_tokens: int
    resumed_from_block: int
    smc: SmcStats | None = None  # method smc only

    def to_dict(self, *, with_token_ids: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_token_ids:
            del d["token_ids"]
        return d
