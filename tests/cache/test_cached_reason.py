"""reason_cached over a real Redis: hits without the engine, per-block checkpoints, exact resumes,
policies, tenants and outages."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence

import msgpack
import numpy as np
import pytest
from powersampling.api import ReasonResult
from powersampling.cache.base import CacheKey, CachePolicy, CacheStatus
from powersampling.cache.cached_reason import reason_cached
from powersampling.cache.keys import request_key
from powersampling.cache.redis_cache import (
    VALUE_VERSION,
    RedisChainCache,
    RedisKeys,
    _mac,
    encode_checkpoint,
    encode_completed,
    mac_key,
)
from powersampling.engines.base import ExtendRequest, Extension
from powersampling.engines.toy import ToyEngine
from powersampling.errors import EngineError
from powersampling.events import BlockFinished, ChainState, SamplerEvent
from powersampling.params import SamplingParams
from redis.asyncio import Redis

from .support import PROMPT, RedisServer, free_port, make_engine, seeded_params, toy_engine_options

NUM_BLOCKS = 6  # seeded_params(): 24 tokens in blocks of 4


def answer(results: Sequence[ReasonResult]) -> list[dict[str, object]]:
    """What must be identical between runs (everything but the wall-clock latency and resume point)."""
    return [r.to_dict() | {"latency_s": None, "resumed_from_block": None} for r in results]


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[RedisChainCache]:
    c = RedisChainCache.from_url(redis_server.url, cooldown_s=0.2)
    yield c
    # Each test's event loop closes its connections; a new loop gets a new cache.


@pytest.fixture
def reference() -> Iterator[list[ReasonResult]]:
    """The uninterrupted answer of seeded_params(), without any cache."""
    engine = make_engine()
    results, status = asyncio.run(reason_cached(engine, PROMPT, seeded_params(), cache=None))
    assert status is CacheStatus.DISABLED
    yield results


def key_of(engine: ToyEngine, params: SamplingParams, tenant: str = "") -> CacheKey:
    return request_key(engine.info.fingerprint, tenant, PROMPT, params)


async def test_a_repeated_seeded_request_is_answered_without_the_engine(
    cache: RedisChainCache, engine: ToyEngine, reference: list[ReasonResult]
) -> None:
    first, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
    assert status is CacheStatus.MISS
    assert answer(first) == answer(reference)
    batches, tokens = engine.batches_run, engine.tokens_generated
    assert tokens > 0

    reported: list[tuple[CacheStatus, int]] = []
    events: list[SamplerEvent] = []
    second, status = await reason_cached(
        engine,
        PROMPT,
        seeded_params(),
        cache=cache,
        on_event=events.append,
        on_cache_status=lambda s, b: reported.append((s, b)),
    )
    assert status is CacheStatus.HIT and reported == [(CacheStatus.HIT, 0)]
    assert (engine.batches_run, engine.tokens_generated) == (batches, tokens)
    assert events == []
    assert second == first  # as stored, latency of the producing run included
    await cache.close()


async def test_a_checkpoint_is_stored_after_every_block(redis_server: RedisServer, engine: ToyEngine) -> None:
    params = seeded_params(n=2)
    key = key_of(engine, params)
    seen: list[tuple[int, int]] = []

    class Spy(RedisChainCache):
        async def put_checkpoint(self, key: CacheKey, state: ChainState) -> None:
            await super().put_checkpoint(key, state)
            stored = await self.get_checkpoints(key)
            seen.append((state.chain_index, stored[state.chain_index].blocks_done))
            assert stored[state.chain_index] == state

    spy = Spy.from_url(redis_server.url)
    results, status = await reason_cached(engine, PROMPT, params, cache=spy)
    assert status is CacheStatus.MISS
    for chain in (0, 1):
        blocks = [b for c, b in seen if c == chain]
        assert blocks == sorted(blocks) and blocks[0] == 1
        assert blocks[-1] == NUM_BLOCKS or results[chain].finish_reason == "eos"
    # Completed: the answer is stored and the checkpoints are gone.
    r = Redis.from_url(redis_server.url)
    keys = RedisKeys.of(key)
    assert await r.exists(keys.done) and not await r.exists(keys.chains)
    await r.aclose()
    await spy.close()


async def run_until_blocks(
    engine: ToyEngine, params: SamplingParams, cache: RedisChainCache, blocks: int, tenant: str = ""
) -> None:
    """Start a request and cancel it once `blocks` blocks have finished (a dropped client)."""
    finished = 0
    task: asyncio.Task[object] | None = None

    def on_event(event: SamplerEvent) -> None:
        nonlocal finished
        if isinstance(event, BlockFinished):
            finished += 1
            if finished == blocks and task is not None:
                task.cancel()

    task = asyncio.create_task(
        reason_cached(engine, PROMPT, params, cache=cache, tenant=tenant, on_event=on_event)
    )
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_interrupted_request_resumes_where_it_stopped(
    cache: RedisChainCache, reference: list[ReasonResult]
) -> None:
    uninterrupted = make_engine()
    await reason_cached(uninterrupted, PROMPT, seeded_params(), cache=None)

    await run_until_blocks(make_engine(), seeded_params(), cache, blocks=3)
    stored = await cache.get_checkpoints(key_of(make_engine(), seeded_params()))
    assert {i: s.blocks_done for i, s in stored.items()} == {0: 3}

    engine = make_engine()
    reported: list[tuple[CacheStatus, int]] = []
    results, status = await reason_cached(
        engine, PROMPT, seeded_params(), cache=cache, on_cache_status=lambda s, b: reported.append((s, b))
    )
    assert status is CacheStatus.RESUMED and reported == [(CacheStatus.RESUMED, 3)]
    assert results[0].resumed_from_block == 3
    assert answer(results) == answer(reference)  # same seed, same tokens and statistics
    assert 0 < engine.tokens_generated < uninterrupted.tokens_generated
    await cache.close()


class FailingEngine(ToyEngine):
    """The toy model, failing after `healthy_batches` batches (a crashed GPU worker)."""

    def __init__(self, healthy_batches: int) -> None:
        super().__init__(**toy_engine_options())
        self.healthy_batches = healthy_batches

    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        if self.batches_run >= self.healthy_batches:
            raise RuntimeError("device lost")
        return super().extend_batch(requests)


async def test_a_failed_run_resumes_from_its_checkpoints(
    cache: RedisChainCache, reference: list[ReasonResult]
) -> None:
    failed = False
    try:
        await reason_cached(FailingEngine(healthy_batches=10), PROMPT, seeded_params(), cache=cache)
    except* EngineError:  # bare or grouped by the sampler's task group
        failed = True
    assert failed
    stored = await cache.get_checkpoints(key_of(make_engine(), seeded_params()))
    assert stored and stored[0].blocks_done >= 1

    results, status = await reason_cached(make_engine(), PROMPT, seeded_params(), cache=cache)
    assert status is CacheStatus.RESUMED
    assert results[0].resumed_from_block == stored[0].blocks_done
    assert answer(results) == answer(reference)
    await cache.close()


async def test_several_chains_resume_each_from_its_own_block(cache: RedisChainCache) -> None:
    params = seeded_params(n=3, seed=99)
    expected, _ = await reason_cached(make_engine(), PROMPT, params, cache=None)
    await run_until_blocks(make_engine(), params, cache, blocks=7)
    stored = await cache.get_checkpoints(key_of(make_engine(), params))
    # Chains whose proposals shared the last batch finish their blocks too before the cancel lands.
    assert sum(s.blocks_done for s in stored.values()) >= 7

    results, status = await reason_cached(make_engine(), PROMPT, params, cache=cache)
    assert status is CacheStatus.RESUMED
    assert [r.resumed_from_block for r in results] == [
        stored[i].blocks_done if i in stored else 0 for i in range(3)
    ]
    assert answer(results) == answer(expected)
    await cache.close()


async def test_policies_and_unseeded_requests(
    redis_server: RedisServer, cache: RedisChainCache, engine: ToyEngine
) -> None:
    r = Redis.from_url(redis_server.url)
    _, status = await reason_cached(engine, PROMPT, seeded_params(seed=None), cache=cache)
    assert status is CacheStatus.UNCACHEABLE
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache, policy=CachePolicy.BYPASS)
    assert status is CacheStatus.BYPASS
    assert await r.dbsize() == 0  # neither wrote anything

    await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
    tokens = engine.tokens_generated
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache, policy=CachePolicy.REFRESH)
    assert status is CacheStatus.MISS and engine.tokens_generated > tokens  # ran again
    assert await r.pttl(RedisKeys.of(key_of(engine, seeded_params())).done) > 0  # and wrote
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
    assert status is CacheStatus.HIT
    await r.aclose()
    await cache.close()


@pytest.mark.parametrize("other", ["b", "a:b", "*", "{a}", "a}", "ä", ""])
async def test_tenants_never_share_entries(redis_server: RedisServer, other: str) -> None:
    cache = RedisChainCache.from_url(redis_server.url)
    engine = make_engine()
    await reason_cached(engine, PROMPT, seeded_params(), cache=cache, tenant="a")
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache, tenant="a")
    assert status is CacheStatus.HIT
    tokens = engine.tokens_generated
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache, tenant=other)
    assert status is CacheStatus.MISS and engine.tokens_generated > tokens

    # An interrupted run of the other tenant leaves checkpoints that tenant "a" never sees.
    await run_until_blocks(make_engine(), seeded_params(seed=5), cache, blocks=2, tenant=other)
    assert await cache.get_checkpoints(key_of(engine, seeded_params(seed=5), tenant=other))
    assert await cache.get_checkpoints(key_of(engine, seeded_params(seed=5), tenant="a")) == {}
    r = Redis.from_url(redis_server.url)
    names = [k.decode() for k in await r.keys("*")]
    assert len({n.split(":")[2] for n in names}) == 2  # two tenant namespaces
    await r.aclose()
    await cache.close()


async def test_entries_that_do_not_fit_the_request_are_not_used(
    redis_server: RedisServer, cache: RedisChainCache, engine: ToyEngine, reference: list[ReasonResult]
) -> None:
    """Well-formed values under the right key whose content contradicts the request."""
    params = seeded_params()
    key = key_of(engine, params)
    keys = RedisKeys.of(key)
    good = reference[0]
    state = ChainState(0, 12345, 2, (1, 2, 3), (-1.0,) * 3, (-1.0,) * 3, False, None, 3, 0, 0, 0, 0)
    r = Redis.from_url(redis_server.url)
    for done, chain in [
        (dataclasses.replace(good, seed=good.seed + 1), state),  # another seed
        (
            dataclasses.replace(good, token_ids=[*good.token_ids, 77]),
            dataclasses.replace(state, blocks_done=99),
        ),
        (dataclasses.replace(good, chain_index=0), dataclasses.replace(state, token_ids=(1, 2, 999))),
    ]:
        await r.set(keys.done, encode_completed(key.digest, [done, done]))  # two chains for n=1
        await r.hset(keys.chains, "0", encode_checkpoint(key.digest, chain))
        results, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS
        assert answer(results) == answer(reference)
    await r.aclose()
    await cache.close()


def garbage_values(digest: str, valid_done: bytes, valid_chain: bytes) -> dict[str, tuple[bytes, bytes]]:
    """Corrupt (done, chain) values: what a crash, a bug, an old version or another program leaves."""

    def reseal(valid: bytes, change: dict[str, object]) -> bytes:
        envelope = msgpack.unpackb(valid)
        body = msgpack.unpackb(envelope["body"]) | change
        envelope["body"] = msgpack.packb(body)
        # Sealed with this process's key (the cache of these tests has no secret), so that the
        # content checks, not the MAC, are what refuses these values.
        envelope["mac"] = _mac(mac_key(None), envelope["type"], envelope["key"], envelope["body"])
        return msgpack.packb(envelope)

    def envelope(valid: bytes, change: dict[str, object]) -> bytes:
        return msgpack.packb(msgpack.unpackb(valid) | change)

    nan = float("nan")
    nan_logp = np.array([-0.5, np.nan, -0.5, -0.5], dtype="<f8").tobytes()
    done_body = msgpack.unpackb(msgpack.unpackb(valid_done)["body"])
    bad_result = done_body["results"][0] | {"log_prob": nan}
    return {
        "garbage": (b"\x00\xffnot a value", b"\xc1\xc1\xc1"),
        "empty": (b"", b""),
        "pickle": (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.", b"\x80\x04N."),
        "wrong-version": (
            envelope(valid_done, {"v": VALUE_VERSION + 1}),
            envelope(valid_chain, {"v": VALUE_VERSION - 1}),
        ),
        "wrong-type-tag": (envelope(valid_done, {"type": "chain"}), envelope(valid_chain, {"type": "done"})),
        "truncated": (valid_done[: len(valid_done) // 2], valid_chain[:-3]),
        "checksum": (
            valid_done[:-12] + b"\x00" + valid_done[-11:],
            valid_chain[:40] + b"!" + valid_chain[41:],
        ),
        "foreign-request": (
            envelope(valid_done, {"key": bytes(32)}),
            envelope(valid_chain, {"key": hashlib.sha256(b"x").digest()}),
        ),
        "not-a-map": (msgpack.packb([1, 2, 3]), msgpack.packb("chain")),
        "mismatched-lengths": (
            reseal(valid_done, {"results": [done_body["results"][0] | {"token_ids": b"\x01\x00\x00"}]}),
            reseal(valid_chain, {"logq": b"\x00" * 8}),
        ),
        "nan": (reseal(valid_done, {"results": [bad_result]}), reseal(valid_chain, {"logp": nan_logp})),
        "bad-fields": (
            reseal(valid_done, {"results": [done_body["results"][0] | {"finish_reason": 3}]}),
            reseal(valid_chain, {"blocks_done": -1}),
        ),
        "missing-fields": (reseal(valid_done, {"results": [{}]}), reseal(valid_chain, {"seed": None})),
        "wrong-chain": (
            reseal(valid_done, {"results": [done_body["results"][0] | {"chain_index": 5}]}),
            reseal(valid_chain, {"chain_index": 1}),
        ),
    }


CORRUPTIONS = [
    "garbage", "empty", "pickle", "wrong-version", "wrong-type-tag", "truncated", "checksum",
    "foreign-request", "not-a-map", "mismatched-lengths", "nan", "bad-fields", "missing-fields",
    "wrong-chain",
]  # fmt: skip


@pytest.mark.parametrize("corruption", CORRUPTIONS)
async def test_corrupt_values_are_survived_and_replaced(
    redis_server: RedisServer,
    reference: list[ReasonResult],
    corruption: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine()
    params = seeded_params()
    key = key_of(engine, params)
    keys = RedisKeys.of(key)
    cache = RedisChainCache.from_url(redis_server.url)
    valid_chain = encode_checkpoint(
        key.digest, ChainState(0, 1, 1, (1, 2, 3, 4), (-0.5,) * 4, (-0.5,) * 4, False, None, 4, 0, 0, 0, 0)
    )
    bad_done, bad_chain = garbage_values(key.digest, encode_completed(key.digest, reference), valid_chain)[
        corruption
    ]
    r = Redis.from_url(redis_server.url)
    await r.set(keys.done, bad_done)
    await r.hset(keys.chains, "0", bad_chain)
    with caplog.at_level(logging.WARNING, "powersampling.cache.redis_cache"):
        results, status = await reason_cached(engine, PROMPT, params, cache=cache)
    assert status is CacheStatus.MISS
    assert answer(results) == answer(reference)
    assert "invalid cache entry" in caplog.text
    assert cache.available
    # The run replaced them: the next request is a hit with the right answer.
    again, status = await reason_cached(engine, PROMPT, params, cache=cache)
    assert status is CacheStatus.HIT and answer(again) == answer(reference)
    await r.aclose()
    await cache.close()


async def test_requests_survive_a_redis_outage_and_caching_comes_back(
    redis_server: RedisServer, reference: list[ReasonResult]
) -> None:
    cache = RedisChainCache.from_url(redis_server.url, cooldown_s=0.3)
    engine = make_engine()
    await reason_cached(engine, PROMPT, seeded_params(), cache=cache)

    redis_server.stop()
    latencies = []
    for seed in range(5):
        started = time.perf_counter()
        results, status = await reason_cached(engine, PROMPT, seeded_params(seed=seed), cache=cache)
        latencies.append(time.perf_counter() - started)
        assert status in (CacheStatus.DISABLED, CacheStatus.MISS) and results[0].token_ids
    results, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
    assert status is CacheStatus.DISABLED and answer(results) == answer(reference)
    assert max(latencies) < 1.0, latencies

    redis_server.start()  # empty: it kept no data
    # The breaker's cool-down (0.3 s, doubling while Redis stayed down) passes by itself; poll for
    # the trial call that finds Redis back, within a bound generous for a loaded machine.
    for _ in range(100):
        await asyncio.sleep(0.1)
        _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
        if status is not CacheStatus.DISABLED:
            break
    # The trial call found Redis back: as a read (a miss on the empty server), or already as the
    # write at the end of the previous request (then this read is a hit).
    assert status in (CacheStatus.MISS, CacheStatus.HIT)
    _, status = await reason_cached(engine, PROMPT, seeded_params(), cache=cache)
    assert status is CacheStatus.HIT
    await cache.close()


async def test_redis_dying_mid_request_does_not_fail_it(
    redis_server: RedisServer, reference: list[ReasonResult]
) -> None:
    # A stopped Redis refuses connections at once; the generous timeout only keeps a loaded test
    # machine from timing out the reads made before the stop.
    cache = RedisChainCache.from_url(redis_server.url, cooldown_s=10.0, timeout_s=1.0)
    blocks = 0

    def on_event(event: SamplerEvent) -> None:
        nonlocal blocks
        if isinstance(event, BlockFinished):
            blocks += 1
            if blocks == 2:
                redis_server.stop()

    started = time.perf_counter()
    results, status = await reason_cached(
        make_engine(), PROMPT, seeded_params(), cache=cache, on_event=on_event
    )
    assert status is CacheStatus.MISS and answer(results) == answer(reference)
    assert time.perf_counter() - started < 5.0
    assert not cache.available
    await cache.close()


async def test_an_unreachable_redis_from_the_start(reference: list[ReasonResult]) -> None:
    cache = RedisChainCache.from_url(f"redis://127.0.0.1:{free_port()}/0", cooldown_s=60.0)
    statuses = []
    for _ in range(3):
        results, status = await reason_cached(make_engine(), PROMPT, seeded_params(), cache=cache)
        statuses.append(status)
        assert answer(results) == answer(reference)
    assert statuses == [CacheStatus.DISABLED] * 3
    await cache.close()


async def test_a_cache_that_raises_is_treated_as_empty(reference: list[ReasonResult]) -> None:
    class Broken:
        async def get_completed(self, *args: object) -> None:
            raise RuntimeError("boom")

        get_checkpoints = put_checkpoint = put_completed = get_completed

        async def close(self) -> None:
            pass

    results, status = await reason_cached(make_engine(), PROMPT, seeded_params(), cache=Broken())  # type: ignore[arg-type]
    assert status is CacheStatus.MISS and answer(results) == answer(reference)
