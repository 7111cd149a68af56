"""What the serving core reports about one call: plain values that each transport renders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from powersampling.api import ReasonResult
from powersampling.cache.base import CacheStatus
from powersampling.engines.base import EngineInfo
from powersampling.events import BlockFinished, SmcChunkFinished, SmcSweepFinished
from powersampling.params import SamplingParams

# Sampler events that a call reports as progress (MH blocks; SMC chunks and sweeps).
PROGRESS_EVENTS = (BlockFinished, SmcChunkFinished, SmcSweepFinished)
ProgressEvent = BlockFinished | SmcChunkFinished | SmcSweepFinished


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The request is admitted and its cache status known; `params` are seeded (what runs)."""

    request_id: str
    cache_status: CacheStatus
    resumed_from_block: int
    prompt_tokens: int
    num_blocks: int
    params: SamplingParams
    engine: EngineInfo


@dataclass(frozen=True, slots=True)
class CallProgress:
    """A chain moved on (an MH block; an SMC chunk or sweep): its whole current text (stop strings
    cut), which later progress may revise."""

    event: ProgressEvent
    text: str
    revised: bool  # earlier text of this chain changed since the last progress sent for it
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class CallFinished:
    """The answers, one per sample, in chain order."""

    results: Sequence[ReasonResult]
    cache_status: CacheStatus
    request_id: str
    latency_ms: float
    prompt_tokens: int
    engine: EngineInfo


CallEvent = CallStarted | CallProgress | CallFinished

__all__ = ["PROGRESS_EVENTS", "CallEvent", "CallFinished", "CallProgress", "CallStarted", "ProgressEvent"]
