"""Counters of the vLLM engine, partly fed by vLLM's own scheduler statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------
# Statistics


@dataclass(slots=True)
class VllmEngineStats:
    """Counters of one engine (read them with `VllmEngine.stats`)."""

    requests: int = 0  # vLLM generation requests submitted for extensions
    tokens: int = 0  # tokens returned to callers
    aborted: int = 0  # requests aborted because their caller went away
    exact_normalizer_requests: int = 0  # extra full-distribution requests (bound above tolerance)
    logq_bound_max: float = 0.0  # the largest error bound of any reported log q (after exact fixes)
    stop_continuations: int = 0  # stop strings vLLM saw but the tokenizer check did not confirm
    prefix_cache_queries: int = 0  # prompt tokens looked up in vLLM's prefix cache
    prefix_cache_hits: int = 0  # ... and found there
    num_running: int = 0  # last reported by vLLM's scheduler
    num_waiting: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def as_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]
        d["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return d


def make_stats_logger_factory(stats: VllmEngineStats) -> Any:
    """A vLLM stat-logger factory whose loggers add scheduler figures to `stats`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is None:
                return
            cache = getattr(scheduler_stats, "prefix_cache_stats", None)
            if cache is not None:
                stats.prefix_cache_queries += int(getattr(cache, "queries", 0))
                stats.prefix_cache_hits += int(getattr(cache, "hits", 0))
            stats.num_running = int(getattr(scheduler_stats, "num_running_reqs", 0))
            stats.num_waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0))

        def log_engine_initialized(self) -> None:
            pass

    def factory(vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        return _Recorder(vllm_config, engine_index)

    return factory


__all__ = ["VllmEngineStats", "make_stats_logger_factory"]
