"""The values a client sees: plain frozen dataclasses, independent of the generated protobuf classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import grpc

Method: TypeAlias = Literal["power", "smc", "sample", "low-temp", "greedy"]
CachePolicy: TypeAlias = Literal["use", "bypass", "refresh"]
CacheStatus: TypeAlias = Literal["hit", "resumed", "miss", "bypass", "disabled", "uncacheable", "unspecified"]
FinishReason: TypeAlias = Literal["eos", "stop", "length", "unspecified"]
ChatMessage: TypeAlias = Mapping[str, str]  # {"role": "user", "content": "..."}


class PowerSamplingError(Exception):
    """A call failed. `code` is the gRPC status; `field` names the offending request field, if any.

    INVALID_ARGUMENT: fix the named field. RESOURCE_EXHAUSTED: the server is at capacity, retry
    later. UNAVAILABLE: the server is starting or stopping (already retried with backoff).
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        self.field: str | None = None
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED) and ": " in message:
            self.field = message.split(": ", 1)[0]
        super().__init__(f"{code.name}: {message}")

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (capacity or availability problems)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters as the server resolved them (defaults filled in)."""

    method: Method
    alpha: float
    proposal_temperature: float | None  # None: 1/alpha
    block_size: int
    max_new_tokens: int
    mcmc_steps: int
    token_budget: int | None
    seed: int | None
    stop: tuple[str, ...]
    n: int
    # Method "smc" only (None otherwise; in ServiceInfo.defaults: what an smc request takes).
    particles: int | None = None
    sweeps: int | None = None
    resample_threshold: float | None = None
    chunk_size: int | None = None
    ramp_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """The request was accepted; the work begins."""

    request_id: str
    cache_status: CacheStatus
    resumed_from_block: int
    prompt_tokens: int
    seed: int | None  # the request's seed, when it had one
    num_blocks: int
    params: SamplingParams
    temperature: float  # what the proposal samples at; 0 means greedy
    model: str
    engine: str


@dataclass(frozen=True, slots=True)
class SmcProgress:
    """Where a Power-SMC sweep stands (method "smc")."""

    sweep_index: int  # counted from 0
    num_sweeps: int
    ess: float  # effective sample size after the chunk, as a fraction of the particles
    resampled: bool  # the particles were resampled after this chunk
    unique_ancestors: int
    particles_alive: int  # particles still generating
    sweep_finished: bool  # this progress closes a sweep: text is the chain's kept answer
    sweep_accepted: bool  # with sweep_finished: the sweep's answer became the kept one
    log_z_hat: float | None  # with sweep_finished: the sweep's log-normaliser estimate


@dataclass(frozen=True, slots=True)
class Progress:
    """A chain finished a block (method "smc": a chunk or a sweep). `text` is its whole current text
    (replace, do not append); for smc, the leading particle's text."""

    chain_index: int
    block_index: int
    num_blocks: int
    text: str
    revised: bool  # text shown earlier changed (MCMC revised it)
    acceptance_rate: float
    change_rate: float
    mcmc_steps: int
    tokens_spent: int
    token_budget: int | None
    num_tokens: int
    finished: bool
    smc: SmcProgress | None = None  # method "smc" only


@dataclass(frozen=True, slots=True)
class SmcStats:
    """What Power-SMC did for one answer (method "smc")."""

    particles: int
    sweeps: int  # sweeps run
    accepted_sweeps: int  # sweeps after the first whose answer was accepted (particle independent MH)
    resamples: int  # over all sweeps
    ess_min: float  # smallest ESS before a resampling decision, as a fraction of the particles
    unique_ancestors: int  # particles of the last sweep's start its final particles descend from
    log_z_hat: float  # of the sweep that produced the answer


@dataclass(frozen=True, slots=True)
class AnswerStats:
    tokens_spent: int
    token_budget: int | None
    mcmc_steps: int
    accepted: int
    changed: int
    skipped: int
    acceptance_rate: float
    change_rate: float
    latency_ms: float
    log_prob: float
    smc: SmcStats | None = None  # method "smc" only


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    stats: AnswerStats
    seed: int  # send it back to reproduce this answer
    chain_index: int


@dataclass(frozen=True, slots=True)
class ReasonResult:
    """The final event: one answer per sample, in chain order."""

    answers: tuple[Answer, ...]
    model: str
    engine: str
    cache_hit: bool
    cache_status: CacheStatus
    request_id: str
    latency_ms: float
    prompt_tokens: int

    @property
    def text(self) -> str:
        """The first answer's text."""
        return self.answers[0].text if self.answers else ""


ReasonEvent: TypeAlias = Started | Progress | ReasonResult


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_samples_per_request: int
    max_prompt_chars: int
    max_message_bytes: int
    max_stop_strings: int
    max_stop_length: int
    max_concurrent_requests: int
    max_queue: int
    max_mcmc_steps: int
    max_alpha: float
    max_particles: int = 0  # method "smc": particles per sweep (0: an older server without smc)
    max_sweeps: int = 0
    # Caps on one request's work (0: an older server that does not report them).
    max_new_tokens: int = 0
    max_token_budget: int = 0
    max_planned_tokens: int = 0  # worst-case proposal tokens of one chain, as the server plans them
    stream_idle_timeout_s: float = 0.0  # a stream whose client stops reading ends after this
    stream_max_age_s: float = 0.0  # 0: no age limit


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a server runs (the Describe call)."""

    model: str
    engine: str
    fingerprint: str
    device: str
    max_context_tokens: int
    has_chat_template: bool
    defaults: SamplingParams
    limits: ServerLimits
    version: str
    cache_enabled: bool
    # The engine options and cache settings the operator set, as text (empty from an older server).
    engine_settings: dict[str, str] = field(default_factory=dict)
    cache_settings: dict[str, str] = field(default_factory=dict)


__all__ = [
    "Answer",
    "AnswerStats",
    "CachePolicy",
    "CacheStatus",
    "ChatMessage",
    "FinishReason",
    "Method",
    "PowerSamplingError",
    "Progress",
    "ReasonEvent",
    "ReasonResult",
    "SamplingParams",
    "ServerLimits",
    "ServiceInfo",
    "SmcProgress",
    "SmcStats",
    "Started",
]
