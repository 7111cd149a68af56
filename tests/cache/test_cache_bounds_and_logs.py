"""Values over the size caps are deleted unread (never transferred, never blamed on Redis), and the
cache's warnings are rate-limited per kind, with a line when Redis comes back."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgpack
import pytest
from powersampling.cache.base import CacheKey, CacheStatus
from powersampling.cache.cached_reason import reason_cached
from powersampling.cache.keys import request_key
from powersampling.cache.redis_cache import (
    MAX_CHECKPOINT_FIELDS,
    VALUE_VERSION,
    RedisChainCache,
    RedisKeys,
    encode_checkpoint,
)
from powersampling.events import ChainState
from redis.asyncio import Redis

from .support import PROMPT, RedisServer, make_engine, seeded_params

LOGGER = "powersampling.cache.redis_cache"
CAP = 4096
HUGE = 1 << 20  # 256 times the cap (the same path as 300 MB, without the wait)
KEY = CacheKey("tenant-a", hashlib.sha256(b"request").hexdigest())


def state(chain_index: int) -> ChainState:
    return ChainState(chain_index, 11, 1, (1, 2), (-0.5, -0.5), (-0.5, -0.5), False, None, 2, 0, 0, 0, 0)


async def bytes_sent(r: Redis) -> int:
    """What the Redis server has sent to all its clients so far."""
    return int((await r.info("stats"))["total_net_output_bytes"])


async def test_an_oversize_answer_is_deleted_unread_and_not_blamed_on_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisChainCache.from_url(redis_server.url, max_value_bytes=CAP)
    r = Redis.from_url(redis_server.url)
    done = RedisKeys.of(KEY).done
    try:
        await r.set(done, b"x" * HUGE)
        before = await bytes_sent(r)
        with caplog.at_level(logging.WARNING, LOGGER):
            assert await cache.get_completed(KEY) is None
        assert await bytes_sent(r) - before < 4 * CAP  # read up to the cap, not the megabyte
        assert not await r.exists(done)
        assert cache.available and cache.breaker.closed
        messages = [rec.getMessage() for rec in caplog.records]
        assert any("oversize" in m and f"{HUGE} bytes" in m for m in messages), messages
        assert not any("unavailable" in m for m in messages), messages
    finally:
        await r.aclose()
        await cache.close()


async def test_oversize_checkpoints_are_deleted_unread_and_the_others_kept(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisChainCache.from_url(redis_server.url, max_value_bytes=CAP)
    r = Redis.from_url(redis_server.url)
    chains = RedisKeys.of(KEY).chains
    try:
        await cache.put_checkpoint(KEY, state(1))
        await r.hset(chains, "0", b"x" * HUGE)
        before = await bytes_sent(r)
        with caplog.at_level(logging.WARNING, LOGGER):
            assert await cache.get_checkpoints(KEY) == {1: state(1)}
        assert await bytes_sent(r) - before < 4 * CAP
        assert await r.hkeys(chains) == [b"1"]
        assert "oversize" in caplog.text and f"{HUGE} bytes" in caplog.text
        assert "unavailable" not in caplog.text and cache.breaker.closed

        # A hash of more fields than any request has chains is not listed: deleted whole.
        await r.hset(chains, mapping={str(i): b"v" for i in range(MAX_CHECKPOINT_FIELDS + 1)})
        assert await cache.get_checkpoints(KEY) == {}
        assert not await r.exists(chains)
        assert cache.breaker.closed
    finally:
        await r.aclose()
        await cache.close()


async def test_a_huge_value_does_not_disable_caching_for_other_requests(
    redis_server: RedisServer,
) -> None:
    engine, params = make_engine(), seeded_params()
    cache = RedisChainCache.from_url(redis_server.url, max_value_bytes=CAP, timeout_s=0.05)
    r = Redis.from_url(redis_server.url)
    try:
        key = request_key(engine.info.fingerprint, "", PROMPT, params)
        # 64 MiB: reading it whole would take longer than the 50 ms timeout and trip the breaker.
        await r.set(RedisKeys.of(key).done, b"\0" * (64 << 20))
        _, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS
        other = seeded_params(seed=99)
        for expected in (CacheStatus.MISS, CacheStatus.HIT):  # unrelated requests still cached
            _, status = await reason_cached(engine, PROMPT, other, cache=cache)
            assert status is expected
        _, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.HIT  # the huge value was replaced by the answer
    finally:
        await r.aclose()
        await cache.close()


async def test_each_kind_of_invalid_value_is_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Several corruptions at once give one line per kind, not one line for all."""
    cache = RedisChainCache.from_url(redis_server.url)
    r = Redis.from_url(redis_server.url)

    def corruptions(digest: str) -> list[bytes]:
        envelope = msgpack.unpackb(encode_checkpoint(digest, state(0)))
        return [
            b"\x00garbage",
            msgpack.packb(envelope | {"v": VALUE_VERSION + 1}),
            msgpack.packb(envelope | {"mac": bytes(32)}),
            msgpack.packb(envelope | {"key": bytes(32)}),
        ]

    try:
        with caplog.at_level(logging.WARNING, LOGGER):
            for round_ in range(3):  # repeats of a kind within the interval are counted, not logged
                for i in range(4):
                    key = CacheKey("t", hashlib.sha256(f"{round_}-{i}".encode()).hexdigest())
                    await r.hset(RedisKeys.of(key).chains, "0", corruptions(key.digest)[i])
                    assert await cache.get_checkpoints(key) == {}
        lines = [rec.getMessage() for rec in caplog.records if "invalid cache entry" in rec.getMessage()]
        assert len(lines) == 4, lines
        for needle in ("not msgpack", "schema version", "MAC", "another request"):
            assert any(needle in line for line in lines), (needle, lines)
    finally:
        await r.aclose()
        await cache.close()


async def test_redis_coming_back_is_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisChainCache.from_url(redis_server.url, cooldown_s=0.2)
    try:
        with caplog.at_level(logging.INFO, LOGGER):
            await cache.put_checkpoint(KEY, state(0))
            redis_server.stop()
            assert await cache.get_checkpoints(KEY) == {}
            assert not cache.available
            redis_server.start()
            await asyncio.sleep(0.25)
            assert await cache.get_checkpoints(KEY) == {}  # the trial call (the data died with Redis)
            assert cache.available
        messages = [rec.getMessage() for rec in caplog.records]
        down = [i for i, m in enumerate(messages) if "unavailable" in m]
        back = [i for i, m in enumerate(messages) if "available again" in m]
        assert len(down) == 1 and len(back) == 1 and down[0] < back[0], messages
        assert caplog.records[back[0]].levelno == logging.INFO
    finally:
        await cache.close()
