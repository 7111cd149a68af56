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
class ChainStarted:
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
class ChainFinished:
    chain_index: int
    state: ChainState
    finish_reason: str  # "eos", "stop" or "length"


SamplerEvent = ChainStarted | McmcStepTaken | McmcStepSkipped | BlockFinished | ChainFinished
EventSink = Callable[[SamplerEvent], None]
