"""What a request returns: plain values, shared by the API, the cache, the server and telemetry.

Besides the answers: how the cache served a request (`CacheStatus`) and how a request asked it to be
used (`CachePolicy`), and the step rates (`StepRates`) every layer reports.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any


class CachePolicy(enum.StrEnum):
    USE = "use"  # read what is there (answer or checkpoints), write what is new
    BYPASS = "bypass"  # neither read nor write
    REFRESH = "refresh"  # do not read, overwrite with the new run


class CacheStatus(enum.StrEnum):
    HIT = "hit"  # answered from a completed entry, no engine work
    RESUMED = "resumed"  # continued from stored checkpoints (per block, or per SMC chunk)
    MISS = "miss"  # nothing usable stored; ran from the start
    BYPASS = "bypass"  # the request asked not to use the cache
    DISABLED = "disabled"  # no cache configured, or it is unreachable right now
    UNCACHEABLE = "uncacheable"  # an unseeded request: its answer is a fresh random draw


def rate(count: int, steps: int) -> float:
    """`count` per step: 0.0 when no step was taken."""
    return count / steps if steps else 0.0


class StepRates:
    """Acceptance and change rates of a value that counts `mcmc_steps`, `accepted_steps` and
    `changed_steps` (a mix-in for frozen dataclasses: it adds no fields)."""

    __slots__ = ()

    if TYPE_CHECKING:  # what the class mixed into provides, as fields or properties

        @property
        def mcmc_steps(self) -> int: ...

        @property
        def accepted_steps(self) -> int: ...

        @property
        def changed_steps(self) -> int: ...

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed MCMC steps (0 when none)."""
        return rate(self.accepted_steps, self.mcmc_steps)

    @property
    def change_rate(self) -> float:
        """Steps that changed the sequence / proposed steps (0 when none)."""
        return rate(self.changed_steps, self.mcmc_steps)


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
