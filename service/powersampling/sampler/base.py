"""The sampler seam: one interface for every sampler of p^alpha (`make_sampler` picks one by method).

A sampler owns its plan, its checkpoint shape and its statistics. The API, the cache and telemetry
talk to "a sampler" through this interface: run the request's chains (optionally resuming from
checkpoints), say which events carry checkpoints, vet a stored checkpoint before it is used, and turn
a chain's final state into the fields of a ReasonResult.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from powersampling.engines.base import Engine, ExtendRequest, Extension
from powersampling.errors import EngineError
from powersampling.events import Checkpoint, EventSink, SamplerEvent
from powersampling.params import SamplingParams
from powersampling.results import SmcStats, StepRates
from powersampling.stops import StopMatcher


def chain_seed(seed: int, chain_index: int) -> int:
    """Independent 63-bit seed of chain `chain_index` of a request seeded with `seed`."""
    state = np.random.SeedSequence([seed, chain_index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


@dataclass(frozen=True, slots=True)
class ChainOutcome(StepRates):
    """What one chain's final state means for its ReasonResult (the sampler-specific fields)."""

    chain_index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str  # "eos", "stop" or "length"
    tokens_spent: int
    mcmc_steps: int
    accepted_steps: int
    changed_steps: int
    skipped_steps: int
    log_prob: float
    smc: SmcStats | None = None


@dataclass(frozen=True, slots=True)
class Draw:
    """Tokens drawn from q after a kept prefix, cut after a stop string, with their log p and log q."""

    tokens: list[int]
    logp: list[float]
    logq: list[float]
    finish_reason: str | None  # "eos", "stop" or None
    generated: int  # tokens the engine produced, including any cut off after a stop string


class Sampler(abc.ABC):
    """Samples the n chains of one prompt from p^alpha through an engine; pure: no I/O of its own."""

    def __init__(
        self,
        engine: Engine,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        on_event: EventSink | None = None,
    ) -> None:
        if params.seed is None:
            raise ValueError("the sampler needs a seeded SamplingParams (see SamplingParams.with_seed)")
        self.engine = engine
        self.prompt = tuple(prompt_ids)
        self.params = params
        self.temperature = params.temperature
        self._emit: EventSink = on_event or (lambda _event: None)
        self._stops = StopMatcher(params.stop, engine.detokenize) if params.stop else None
        self.plan = self._plan(params)

    @abc.abstractmethod
    def _plan(self, params: SamplingParams) -> object:
        """The sampler's plan of the request (blocks and steps, particles and sweeps, ...)."""

    def _draw(self, kept: Sequence[int], request: ExtendRequest, ext: Extension) -> Draw:
        """The engine's answer to `request` (an extension of `kept`), checked and cut at a stop string."""
        tokens, logp, logq = list(ext.token_ids), list(ext.logp), list(ext.logq)
        generated = len(tokens)
        if not 0 < generated <= request.max_new_tokens or not len(logp) == len(logq) == generated:
            raise EngineError(
                f"engine returned {generated} tokens with {len(logp)} log p and {len(logq)} log q "
                f"for a request of at most {request.max_new_tokens}"
            )
        finish_reason = "eos" if ext.ended_by_eos else None
        if self._stops is not None and finish_reason is None:
            cut = self._stops.cut(kept, tokens)
            if cut is not None:
                tokens, logp, logq = tokens[:cut], logp[:cut], logq[:cut]
                finish_reason = "stop"
        return Draw(tokens, logp, logq, finish_reason, generated)

    def answer_text(self, token_ids: Sequence[int]) -> str:
        """An answer's text: generated tokens without special tokens, cut before a stop string."""
        text = self.engine.detokenize(token_ids)
        return self._stops.trim_text(text) if self._stops is not None else text

    @property
    @abc.abstractmethod
    def progress_slots(self) -> int:
        """How many progress steps a chain runs through: MH's blocks, SMC's chunks over all sweeps
        (ChainStarted's count and the positions `resume_position` returns)."""

    @abc.abstractmethod
    async def run(self, resume: Mapping[int, Checkpoint] | None = None) -> Sequence[Checkpoint]:
        """Run the request's chains (from their checkpoints in `resume`, if any) to their ends."""

    @abc.abstractmethod
    def outcome(self, state: Checkpoint) -> ChainOutcome:
        """The result fields of a chain's final state."""

    @abc.abstractmethod
    def checkpoint_of(self, event: SamplerEvent) -> Checkpoint | None:
        """The resumable checkpoint an event carries, if it carries one."""

    @abc.abstractmethod
    def fits_checkpoint(self, index: int, state: object) -> bool:
        """Whether a stored checkpoint can continue chain `index` of this request (it may come from a
        cache: anything that does not match this request's plan is refused)."""

    @abc.abstractmethod
    def resume_position(self, state: Checkpoint) -> int:
        """Where a chain resumed from `state` starts (blocks, or chunk slots for SMC); 0 = from scratch."""
