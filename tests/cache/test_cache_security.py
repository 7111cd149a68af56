"""Who may choose what the cache serves: values are sealed with a keyed MAC, and an answer's text must
be the text of its token ids. Forged values are written with a real Redis client, as anyone who can
reach the Redis could, and the request must recompute, never serve them."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence

import msgpack
import pytest
from powersampling.api import ReasonResult, reason_async
from powersampling.cache.base import CacheKey
from powersampling.cache.cached_reason import reason_cached
from powersampling.cache.codec import (
    InvalidValue,
    decode_completed,
    encode_checkpoint,
    encode_completed,
    mac_key,
)
from powersampling.cache.keys import request_key
from powersampling.cache.redis_cache import RedisChainCache
from powersampling.cache.redis_keys import RedisKeys
from powersampling.engines.toy import ToyEngine
from powersampling.events import ChainState, SmcChunkFinished, SmcState
from powersampling.params import Method, SamplingParams
from powersampling.results import CacheStatus
from powersampling.sampler import chain_seed
from redis.asyncio import Redis

from .support import PROMPT, RedisServer, make_engine, reseal_publicly, result, seeded_params

SECRET = "a secret of the replicas, 32 chars"
OTHER_SECRET = "another secret, not the replicas"


def key_of(engine: ToyEngine, params: SamplingParams) -> CacheKey:
    return request_key(engine.info.fingerprint, "", PROMPT, params)


def tokens(results: Sequence[ReasonResult]) -> list[tuple[list[int], str]]:
    return [(r.token_ids, r.text) for r in results]


async def test_a_re_sealed_answer_saying_pwned_is_not_served(redis_server: RedisServer) -> None:
    engine, params = make_engine(), seeded_params()
    cache = RedisChainCache.from_url(redis_server.url)
    r = Redis.from_url(redis_server.url)
    try:
        expected, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS
        done = RedisKeys.of(key_of(engine, params)).done
        await r.set(done, reseal_publicly(await r.get(done), {"text": "PWNED"}))

        results, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS  # recomputed, not a HIT
        assert tokens(results) == tokens(expected)
        assert "PWNED" not in (await r.get(done) or b"").decode("latin-1")  # replaced by the new run
    finally:
        await r.aclose()
        await cache.close()


async def test_an_answer_sealed_with_the_real_key_must_have_the_text_of_its_ids(
    redis_server: RedisServer,
) -> None:
    """Even with the MAC key (a leaked secret, a bug in a writer), text that is not its ids' is refused."""
    engine, params = make_engine(), seeded_params()
    cache = RedisChainCache.from_url(redis_server.url, secret=SECRET)
    r = Redis.from_url(redis_server.url)
    try:
        expected = await reason_async(PROMPT, engine, params)
        key = key_of(engine, params)
        forged = [dataclasses.replace(expected[0], text="PWNED")]
        await r.set(RedisKeys.of(key).done, encode_completed(key.digest, forged, key=mac_key(SECRET)))

        results, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS
        assert tokens(results) == tokens(expected)
        # The same value with its true text is a hit: the text check is all that refused it.
        await r.set(RedisKeys.of(key).done, encode_completed(key.digest, expected, key=mac_key(SECRET)))
        _, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.HIT
    finally:
        await r.aclose()
        await cache.close()


async def test_a_forged_checkpoint_is_not_resumed(redis_server: RedisServer) -> None:
    engine, params = make_engine(), seeded_params()
    cache = RedisChainCache.from_url(redis_server.url)
    r = Redis.from_url(redis_server.url)
    try:
        expected = await reason_async(PROMPT, engine, params)
        key = key_of(engine, params)
        assert params.seed is not None
        chosen = ChainState(
            0,
            chain_seed(params.seed, 0),
            1,
            (1, 1, 1, 1),
            (-1.0,) * 4,
            (-1.0,) * 4,
            False,
            None,
            4,
            0,
            0,
            0,
            0,
        )
        # Well-formed and fitting the request (chain, seed, block, lengths, vocabulary), sealed
        # publicly: only the MAC can tell it is forged.
        forged = reseal_publicly(encode_checkpoint(key.digest, chosen), {})
        await r.hset(RedisKeys.of(key).chains, "0", forged)

        results, status = await reason_cached(engine, PROMPT, params, cache=cache)
        assert status is CacheStatus.MISS  # not RESUMED into tokens someone chose
        assert tokens(results) == tokens(expected)
    finally:
        await r.aclose()
        await cache.close()


async def test_replicas_share_values_only_with_the_same_secret(redis_server: RedisServer) -> None:
    engine, params = make_engine(), seeded_params()
    first = RedisChainCache.from_url(redis_server.url, secret=SECRET)
    same = RedisChainCache.from_url(redis_server.url, secret=SECRET.encode())
    other = RedisChainCache.from_url(redis_server.url, secret=OTHER_SECRET)
    try:
        _, status = await reason_cached(engine, PROMPT, params, cache=first)
        assert status is CacheStatus.MISS
        _, status = await reason_cached(engine, PROMPT, params, cache=same)
        assert status is CacheStatus.HIT
        _, status = await reason_cached(engine, PROMPT, params, cache=other)
        assert status is CacheStatus.MISS  # and its run overwrote the entry with its own seal
        _, status = await reason_cached(engine, PROMPT, params, cache=first)
        assert status is CacheStatus.MISS
    finally:
        for cache in (first, same, other):
            await cache.close()


def test_a_value_names_its_key_under_the_mac() -> None:
    """The MAC covers the digest and type too: a sealed value moved to another request is refused."""
    results = [result(0)]
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    value = msgpack.unpackb(encode_completed(a, results, key=mac_key(SECRET)))
    value["key"] = bytes.fromhex(b)
    with pytest.raises(InvalidValue) as info:
        decode_completed(b, msgpack.packb(value), key=mac_key(SECRET))
    assert info.value.kind == "mac"
    assert decode_completed(a, encode_completed(a, results, key=mac_key(SECRET)), key=mac_key(SECRET))
    with pytest.raises(InvalidValue, match="MAC"):
        decode_completed(a, encode_completed(a, results, key=mac_key(SECRET)), key=mac_key(OTHER_SECRET))


@pytest.mark.parametrize("secret", ["", "short", b"\x00" * 15])
def test_short_secrets_are_refused(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        RedisChainCache.from_url("redis://127.0.0.1:1/0", secret=secret)


def test_without_a_secret_the_process_key_is_used_and_said(caplog: pytest.LogCaptureFixture) -> None:
    import powersampling.cache.redis_cache as module

    module._warned_no_secret = False
    with caplog.at_level(logging.WARNING, "powersampling.cache.redis_cache"):
        RedisChainCache.from_url("redis://127.0.0.1:1/0")
        RedisChainCache.from_url("redis://127.0.0.1:1/0")
    warnings = [r.getMessage() for r in caplog.records if "no cache secret" in r.getMessage()]
    assert len(warnings) == 1 and "other replicas" in warnings[0]
    assert mac_key(None) == mac_key(None) and len(mac_key(None)) == 32
    assert SECRET not in repr(RedisChainCache.from_url("redis://h:1/0", secret=SECRET).settings)


async def test_smc_checkpoints_are_sealed_with_the_replicas_secret(redis_server: RedisServer) -> None:
    engine = make_engine()
    params = SamplingParams(
        method=Method.SMC, alpha=4.0, max_new_tokens=12, particles=4, chunk_size=3, seed=7
    )
    states: list[SmcState] = []

    def keep(event: object) -> None:
        if isinstance(event, SmcChunkFinished):
            states.append(event.state)

    await reason_async(PROMPT, engine, params, on_event=keep)
    assert states, "the run emitted no SMC checkpoint"
    state = states[len(states) // 2]
    key = key_of(engine, params)
    writer = RedisChainCache.from_url(redis_server.url, secret=SECRET)
    same = RedisChainCache.from_url(redis_server.url, secret=SECRET)
    other = RedisChainCache.from_url(redis_server.url, secret=OTHER_SECRET)
    try:
        await writer.put_checkpoint(key, state)
        assert await same.get_checkpoints(key) == {state.chain_index: state}
        assert await other.get_checkpoints(key) == {}  # not its seal: refused (and deleted)
    finally:
        for cache in (writer, same, other):
            await cache.close()
