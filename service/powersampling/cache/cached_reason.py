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
  lengths against the block plan, token ids against the vocabulary): an entry that does not fit is
  ignored, never served.
* Checkpoints are written after every finished block, in block order per chain, at most one write in
  flight per chain (a slow cache sees only each chain's newest state); the completed answer is
  written after every checkpoint write has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from powersampling.api import ReasonResult, make_params, reason_ids
from powersampling.cache.base import CacheKey, CachePolicy, CacheStatus, ChainCache, NullCache
from powersampling.cache.keys import request_key
from powersampling.engines.base import Engine
from powersampling.events import BlockFinished, ChainState, EventSink, SamplerEvent
from powersampling.params import SamplingParams
from powersampling.sampler import BudgetPlan, chain_seed

logger = logging.getLogger(__name__)

CacheStatusSink = Callable[[CacheStatus, int], None]  # status, block resumed from (0 if none)
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
    resume: dict[int, ChainState] = {}
    if policy is CachePolicy.USE and _available(cache):
        completed = await _quietly(lambda: cache.get_completed(key), None)
        if completed is not None and _fits_completed(completed, params, engine):
            # Served as stored: latency_s and the statistics are those of the run that produced it.
            report(CacheStatus.HIT, 0)
            return completed, CacheStatus.HIT
        stored = await _quietly(lambda: cache.get_checkpoints(key), {})
        plan = BudgetPlan.from_params(params)
        resume = {i: s for i, s in stored.items() if _fits_checkpoint(i, s, params, plan, engine)}
    if resume:
        status = CacheStatus.RESUMED
    elif not _available(cache):
        status = CacheStatus.DISABLED
    report(status, min(s.blocks_done for s in resume.values()) if resume else 0)

    writer = _CheckpointWriter(cache, key)

    def on_sampler_event(event: SamplerEvent) -> None:
        if isinstance(event, BlockFinished):
            writer.submit(event.state)
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
        self._newest: dict[int, ChainState] = {}
        self._writers: dict[int, asyncio.Task[None]] = {}

    def submit(self, state: ChainState) -> None:
        index = state.chain_index
        self._newest[index] = state
        if index not in self._writers:
            self._writers[index] = asyncio.get_running_loop().create_task(self._drain(index))

    async def _drain(self, index: int) -> None:
        try:
            while (state := self._newest.pop(index, None)) is not None:
                await _quietly(lambda s=state: self._cache.put_checkpoint(self._key, s), None)
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


def _fits_completed(results: Sequence[ReasonResult], params: SamplingParams, engine: Engine) -> bool:
    """Whether a stored answer is one of this request: n chains in order, this seed, known tokens."""
    vocab = engine.vocab_size
    return len(results) == params.n and all(
        r.chain_index == i
        and r.seed == params.seed
        and len(r.token_ids) <= params.max_new_tokens
        and all(0 <= t < vocab for t in r.token_ids)
        for i, r in enumerate(results)
    )


def _fits_checkpoint(
    index: int, state: ChainState, params: SamplingParams, plan: BudgetPlan, engine: Engine
) -> bool:
    """Whether a stored checkpoint can continue chain `index` of this request."""
    assert params.seed is not None
    if not (0 <= index < params.n and state.chain_index == index):
        return False
    if state.seed != chain_seed(params.seed, index) or not 1 <= state.blocks_done <= plan.num_blocks:
        return False
    length = len(state.token_ids)
    if not length == len(state.logp) == len(state.logq) or length > plan.block_target(state.blocks_done - 1):
        return False
    if state.tokens_spent < length or (
        params.token_budget is not None and state.tokens_spent > params.token_budget
    ):
        return False
    vocab = engine.vocab_size
    return all(0 <= t < vocab for t in state.token_ids)


__all__ = ["CacheKey", "CachePolicy", "CacheStatus", "reason_cached"]
