"""What the sampler reports while it works: plain values, one stream.

The gRPC stream, the Redis checkpoints and the OpenTelemetry spans all subscribe to these events;
the sampler knows none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChainState:
    """Everything a chain needs to continue deterministically after block `blocks_done`.

    Stored logp/logq of kept tokens stay valid (they depend only on their prefix), so a resumed
    chain never re-scores them.
    """

    chain_index: int
    seed: int
    blocks_done: int
    token_ids: tuple[int, ...]
    logp: tuple[float, ...]
    logq: tuple[float, ...]
    ended: bool
    finish_reason: str | None  # "eos", "stop" or None while the chain is open
    tokens_spent: int
    mcmc_steps: int
    accepted_steps: int
    changed_steps: int
    skipped_steps: int


@dataclass(frozen=True, slots=True)
class SmcParticle:
    """One Power-SMC particle: its tokens, their log p, its log-weight since the last resampling."""

    token_ids: tuple[int, ...]
    logp: tuple[float, ...]
    log_weight: float
    finish_reason: str | None  # "eos", "stop", "length" (reached max_new_tokens) or None while open
    ancestor: int  # index, at the start of its sweep, of the particle it descends from


@dataclass(frozen=True, slots=True)
class SmcState:
    """Everything a Power-SMC chain needs to continue exactly after chunk `chunks_done` of sweep
    `sweep_index` (the particle set after that chunk's resampling decision), plus the particle
    independent MH answer so far. Between sweeps `particles` is empty and `chunks_done` is 0.
    """

    chain_index: int
    seed: int
    num_particles: int  # particles per sweep, after the token budget's cap
    sweep_index: int  # the sweep in progress (or the next one to run)
    chunks_done: int  # of that sweep
    particles: tuple[SmcParticle, ...]
    sweep_log_z: float  # log Ẑ of the sweep in progress so far (its resamplings)
    sweep_resamples: int
    sweep_ess_min: float  # fraction of particles; 1.0 before the first check
    # The answer kept so far (particle independent MH), none before the first sweep ends.
    answer_token_ids: tuple[int, ...]
    answer_logp: tuple[float, ...]
    answer_finish_reason: str | None
    answer_log_z: float | None
    # Totals of the chain.
    tokens_spent: int
    sweeps_done: int
    accepted_sweeps: int
    changed_sweeps: int
    skipped_sweeps: int
    resamples: int
    ess_min: float
    unique_ancestors: int  # of the final particle set of the last sweep that ended
    ended: bool

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The kept answer's tokens (what a chain's ChainState.token_ids is for MH)."""
        return self.answer_token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.answer_finish_reason


@dataclass(frozen=True, slots=True)
class ChainStarted:
    """A chain starts (or resumes). For method smc, `num_blocks` counts chunk slots over all sweeps
    (sweeps × chunks per sweep) and `resumed_from_block` is the slot it resumes at."""

    chain_index: int
    seed: int
    num_blocks: int
    resumed_from_block: int  # 0 for a fresh chain


@dataclass(frozen=True, slots=True)
class McmcStepTaken:
    """One Metropolis-Hastings step: resample from `resample_index`, accept or keep."""

    chain_index: int
    block_index: int
    step_index: int
    resample_index: int
    current_length: int
    proposal_length: int
    proposal_tokens: int  # tokens the engine generated for this proposal
    log_acceptance_ratio: float
    accepted: bool
    changed: bool  # accepted and the sequence differs from before
    tokens_spent: int  # of the chain so far


@dataclass(frozen=True, slots=True)
class McmcStepSkipped:
    """A step whose worst-case cost did not fit the token budget: the chain stays where it is."""

    chain_index: int
    block_index: int
    step_index: int
    resample_index: int
    cost_bound: int


@dataclass(frozen=True, slots=True)
class BlockFinished:
    """A block is done (extension plus its MCMC steps); `state` is a resumable checkpoint."""

    chain_index: int
    block_index: int
    num_blocks: int
    planned_steps: int
    revised: bool  # tokens generated before this block changed during its MCMC steps
    state: ChainState


@dataclass(frozen=True, slots=True)
class SmcChunkFinished:
    """Power-SMC: every open particle of the sweep got one more chunk; `state` is a resumable
    checkpoint. `ess` is the effective sample size before the resampling decision, as a fraction of
    the particles; `leader_token_ids` are the tokens of the highest-weight particle (for progress)."""

    chain_index: int
    sweep_index: int
    num_sweeps: int
    chunk_index: int
    ess: float
    resampled: bool
    unique_ancestors: int
    particles_alive: int  # particles still open after this chunk
    tokens_spent: int  # of the chain so far
    leader_token_ids: tuple[int, ...]
    state: SmcState


@dataclass(frozen=True, slots=True)
class SmcSweepFinished:
    """Power-SMC: a sweep ended with its answer and log Ẑ; `accepted` says whether the particle
    independent MH kept it (the first sweep's answer always is)."""

    chain_index: int
    sweep_index: int
    num_sweeps: int
    log_z_hat: float
    accepted: bool
    answer_token_ids: tuple[int, ...]
    state: SmcState


@dataclass(frozen=True, slots=True)
class ChainFinished:
    chain_index: int
    state: ChainState | SmcState  # SmcState for method smc
    finish_reason: str  # "eos", "stop" or "length"


Checkpoint = ChainState | SmcState  # a resumable chain state: MH's or Power-SMC's

SamplerEvent = (
    ChainStarted
    | McmcStepTaken
    | McmcStepSkipped
    | BlockFinished
    | SmcChunkFinished
    | SmcSweepFinished
    | ChainFinished
)
EventSink = Callable[[SamplerEvent], None]
