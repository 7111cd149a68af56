"""`reason_cached`: the sampler run wrapped in cache look-ups and per-block checkpoints.

Semantics:
* A seeded request is deterministic, so its completed answer is reusable and its chains can resume
  from the last stored block. An unseeded request draws a fresh seed: it is never served from the
  cache (it asked for a new random draw) and nothing is stored for it (no one could ask for it again).
* policy "use" reads and writes, "refresh" only writes (overwriting), "bypass" does neither.
* The cache never fails a request: a cache that errors behaves like an empty one (the Redis cache
  swallows and logs its own errors; see redis_cache.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from powersampling.api import ReasonResult, reason_async
from powersampling.cache.base import CacheKey, CachePolicy, CacheStatus, ChainCache, NullCache
from powersampling.cache.keys import request_key
from powersampling.engines.base import Engine
from powersampling.events import BlockFinished, EventSink, SamplerEvent
from powersampling.params import SamplingParams

CacheStatusSink = Callable[[CacheStatus, int], None]  # status, block resumed from (0 if none)


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
    """Answer from the cache, resume from checkpoints, or run; returns the results and the status."""
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
        return await reason_async(list(prompt_ids), engine, params, on_event=on_event), status

    key = request_key(engine.info.fingerprint, tenant, prompt_ids, params)
    resume = {}
    if policy is CachePolicy.USE:
        completed = await cache.get_completed(key)
        if completed is not None and len(completed) == params.n:
            report(CacheStatus.HIT, 0)
            return completed, CacheStatus.HIT
        resume = {i: s for i, s in (await cache.get_checkpoints(key)).items() if i < params.n}
    if resume:
        status = CacheStatus.RESUMED
    report(status, min((s.blocks_done for s in resume.values()), default=0) if resume else 0)

    writes: set[asyncio.Task[None]] = set()

    def on_sampler_event(event: SamplerEvent) -> None:
        if isinstance(event, BlockFinished):
            task = asyncio.get_running_loop().create_task(cache.put_checkpoint(key, event.state))
            writes.add(task)
            task.add_done_callback(writes.discard)
        if on_event is not None:
            on_event(event)

    try:
        results = await reason_async(
            list(prompt_ids), engine, params, on_event=on_sampler_event, resume=resume
        )
    finally:
        if writes:
            await asyncio.gather(*writes, return_exceptions=True)
    await cache.put_completed(key, results)
    return results, status


__all__ = ["CacheKey", "CachePolicy", "CacheStatus", "reason_cached"]
