"""`reason_cached`: the sampler run wrapped in cache look-ups and per-block checkpoints.

Semantics:
* A seeded request is deterministic, so its completed answer is reusable and its chains can resume
  from the last stored block. An unseeded request draws a fresh seed: it is never served from the
  cache (it asked for a new random draw) and nothing is stored for it (no one could ask for it again).
* policy "use" reads and writes, "refresh" only writes (overwriting), "bypass" does neither.
* The cache never fails a request: a cache that errors behaves like an empty one (the Redis cache
  swallows and logs its own errors; see redis_cache.py, and errors of any other cache are caught
  here). A cache that reports itself unreachable (`available` false) gives status "disabled"; its
  writes are still attempted, so caching resumes by itself when it comes back.
* What comes back from the cache is checked against the request before use (chain indices, seeds,
  lengths against the sampler's plan, token ids against the vocabulary, an answer's text against the
  text of its token ids): an entry that does not fit is ignored, never served. The sampler of the
  request's method vets its own checkpoints.
* Checkpoints are written whenever the sampler emits one (after every finished block for MH, after
  every chunk and sweep for Power-SMC), in order per chain, at most one write in flight per chain (a
  slow cache sees only each chain's newest state); the completed answer is written after every
  checkpoint write has ended.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from powersampling.api import ReasonResult, make_params, reason_ids
from powersampling.cache.base import CacheKey, ChainCache, NullCache
from powersampling.cache.keys import request_key
from powersampling.engines.base import Engine
from powersampling.events import Checkpoint, EventSink, SamplerEvent
from powersampling.params import Method, SamplingParams
from powersampling.results import CachePolicy, CacheStatus
from powersampling.sampler import Sampler, make_sampler

logger = logging.getLogger(__name__)

CacheStatusSink = Callable[[CacheStatus, int], None]  # status, block (SMC: chunk slot) resumed from
T = TypeVar("T")


async def reason_cached(
    engine: Engine,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    cache: ChainCache | None,
    tenant: str = "",
    policy: CachePolicy = CachePolicy.USE,
    on_event: EventSink | None = None,
    on_cache_status: CacheStatusSink | None = None,
) -> tuple[list[ReasonResult], CacheStatus]:
    """Answer from the cache, resume from checkpoints, or run; returns the results and the status.

    `prompt_ids` are checked already (`powersampling.api.encode_and_check`); they are not re-validated.
    """
    report = on_cache_status or (lambda _status, _block: None)
    if cache is None or isinstance(cache, NullCache):
        status = CacheStatus.DISABLED
    elif policy is CachePolicy.BYPASS:
        status = CacheStatus.BYPASS
    elif params.seed is None:
        status = CacheStatus.UNCACHEABLE
    else:
        status = CacheStatus.MISS
    if status is not CacheStatus.MISS or cache is None:
        report(status, 0)
        return await reason_ids(engine, prompt_ids, make_params(params), on_event=on_event), status

    key = request_key(engine.info.fingerprint, tenant, prompt_ids, params)
    # The sampler of this request's method, for its checkpoint rules (the run builds its own).
    sampler = make_sampler(engine, prompt_ids, params)
    resume: dict[int, Checkpoint] = {}
    if policy is CachePolicy.USE and _available(cache):
        completed = await _quietly(lambda: cache.get_completed(key), None)
        # Detokenizing every chain to check its text is real CPU work: keep it off the event loop.
        if completed is not None and await asyncio.to_thread(_fits_completed, completed, params, sampler):
            # Served as stored: latency_s and the statistics are those of the run that produced it.
            report(CacheStatus.HIT, 0)
            return completed, CacheStatus.HIT
        stored: dict[int, Checkpoint] = await _quietly(lambda: cache.get_checkpoints(key), {})
        resume = {i: s for i, s in stored.items() if sampler.fits_checkpoint(i, s)}
    if resume:
        status = CacheStatus.RESUMED
    elif not _available(cache):
        status = CacheStatus.DISABLED
    report(status, min(sampler.resume_position(s) for s in resume.values()) if resume else 0)

    writer = _CheckpointWriter(cache, key)

    def on_sampler_event(event: SamplerEvent) -> None:
        state = sampler.checkpoint_of(event)
        if state is not None:
            writer.submit(state)
        if on_event is not None:
            on_event(event)

    try:
        results = await reason_ids(engine, prompt_ids, params, on_event=on_sampler_event, resume=resume)
    finally:
        # Checkpoints of finished blocks are kept even when the run fails or is cancelled: a re-sent
        # request resumes from them.
        await writer.flush()
    await _quietly(lambda: cache.put_completed(key, results), None)
    return results, status


class _CheckpointWriter:
    """Writes each chain's newest checkpoint, in order, with at most one write in flight per chain."""

    def __init__(self, cache: ChainCache, key: CacheKey) -> None:
        self._cache = cache
        self._key = key
        self._newest: dict[int, Checkpoint] = {}
        self._writers: dict[int, asyncio.Task[None]] = {}

    def submit(self, state: Checkpoint) -> None:
        index = state.chain_index
        self._newest[index] = state
        if index not in self._writers:
            self._writers[index] = asyncio.get_running_loop().create_task(self._drain(index))

    async def _drain(self, index: int) -> None:
        try:
            while (state := self._newest.pop(index, None)) is not None:
                await _quietly(functools.partial(self._cache.put_checkpoint, self._key, state), None)
        finally:
            del self._writers[index]

    async def flush(self) -> None:
        """Wait for the writes under way (each is bounded by the cache's own timeouts)."""
        if self._writers:
            await asyncio.gather(*self._writers.values(), return_exceptions=True)


def _available(cache: ChainCache) -> bool:
    # Optional beyond the ChainCache protocol: the Redis cache says when it is skipping Redis.
    return bool(getattr(cache, "available", True))


async def _quietly(call: Callable[[], Awaitable[T]], default: T) -> T:
    """The call's result, or `default` if the cache raised (it should not; see the module notes)."""
    try:
        return await call()
    except Exception:
        logger.exception("the cache raised; going on without it")
        return default


def _fits_completed(results: Sequence[ReasonResult], params: SamplingParams, sampler: Sampler) -> bool:
    """Whether a stored answer is one of this request: n chains in order, this seed and method (with
    SMC statistics exactly for smc), known tokens, and each text the very text of its token ids (what
    the sampler would have produced)."""
    vocab = sampler.engine.vocab_size
    return len(results) == params.n and all(
        r.chain_index == i
        and r.seed == params.seed
        and r.method == params.method.value
        and (r.smc is not None) == (params.method is Method.SMC)
        and len(r.token_ids) <= params.max_new_tokens
        and all(0 <= t < vocab for t in r.token_ids)
        and r.text == sampler.answer_text(r.token_ids)
        for i, r in enumerate(results)
    )


__all__ = ["CacheKey", "CachePolicy", "CacheStatus", "reason_cached"]
