"""Power-SMC in the cache: the particle-set checkpoint's value format, completed SMC answers keyed
by the SMC fields, and a request interrupted mid-sweep that resumes to the same answer."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from powersampling.cache.base import CacheStatus
from powersampling.cache.cached_reason import reason_cached
from powersampling.cache.keys import request_key
from powersampling.cache.redis_cache import (
    SMC_CHECKPOINT_TYPE,
    InvalidValue,
    RedisChainCache,
    decode_checkpoint,
    decode_completed,
    encode_checkpoint,
    encode_completed,
)
from powersampling.events import SamplerEvent, SmcChunkFinished, SmcParticle, SmcState
from powersampling.params import SamplingParams
from powersampling.results import SmcStats

from .support import PROMPT, RedisServer, make_engine, result

DIGEST = hashlib.sha256(b"smc request").hexdigest()
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
reasons = st.sampled_from([None, "eos", "stop", "length"])


@st.composite
def smc_states(draw: st.DrawFn) -> SmcState:
    n = draw(st.integers(1, 8))
    pool = [
        (tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=k, max_size=k))), k)
        for k in draw(st.lists(st.integers(0, 12), min_size=1, max_size=4))
    ]
    particles = []
    for _ in range(draw(st.sampled_from([0, n]))):
        ids, k = draw(st.sampled_from(pool))
        logp = tuple(draw(st.lists(finite, min_size=k, max_size=k)))
        particles.append(SmcParticle(ids, logp, draw(finite), draw(reasons), draw(st.integers(0, n - 1))))
    # Resampled copies: the same particle object several times.
    if particles and draw(st.booleans()):
        particles = [particles[0]] * len(particles)
    m = draw(st.integers(0, 10))
    done = draw(st.integers(0, 64))
    accepted = draw(st.integers(0, done))
    return SmcState(
        chain_index=draw(st.integers(0, 2**31 - 1)),
        seed=draw(st.integers(0, 2**63 - 1)),
        num_particles=n,
        sweep_index=draw(st.integers(0, 64)),
        chunks_done=draw(st.integers(0, 1000)),
        particles=tuple(particles),
        sweep_log_z=draw(finite),
        sweep_resamples=draw(st.integers(0, 1000)),
        sweep_ess_min=draw(st.floats(1e-6, 1.0)),
        answer_token_ids=tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=m, max_size=m))),
        answer_logp=tuple(draw(st.lists(finite, min_size=m, max_size=m))),
        answer_finish_reason=draw(reasons),
        answer_log_z=draw(st.one_of(st.none(), finite)),
        tokens_spent=draw(st.integers(0, 2**40)),
        sweeps_done=done,
        accepted_sweeps=accepted,
        changed_sweeps=draw(st.integers(0, accepted)),
        skipped_sweeps=draw(st.integers(0, 64)),
        resamples=draw(st.integers(0, 10_000)),
        ess_min=draw(st.floats(1e-6, 1.0)),
        unique_ancestors=draw(st.integers(0, n)),
        ended=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None)
@given(smc_states())
def test_smc_checkpoint_round_trip_is_exact(state: SmcState) -> None:
    value = encode_checkpoint(DIGEST, state)
    assert msgpack.unpackb(value)["type"] == SMC_CHECKPOINT_TYPE
    assert decode_checkpoint(DIGEST, value) == state
    assert decode_checkpoint(DIGEST, value, state.chain_index) == state


def test_copies_of_a_particle_are_stored_once() -> None:
    long = SmcParticle(tuple(range(2000)), (-0.5,) * 2000, 0.0, None, 3)
    state = dataclasses.replace(example_state(), particles=(long,) * 64, num_particles=64)
    value = encode_checkpoint(DIGEST, state)
    assert len(value) < 2000 * 8 + 64 * 16 + 1000
    assert decode_checkpoint(DIGEST, value) == state


def example_state() -> SmcState:
    p = SmcParticle((1, 2), (-0.1, -0.2), -0.3, "eos", 0)
    return SmcState(
        0, 7, 2, 1, 1, (p, p), 0.0, 1, 0.5, (3,), (-0.5,), "length", -1.0, 10, 1, 0, 0, 0, 1, 0.5, 1, False
    )


def test_invalid_smc_checkpoints_are_rejected() -> None:
    value = encode_checkpoint(DIGEST, example_state())
    with pytest.raises(InvalidValue):
        decode_checkpoint(DIGEST, value, chain_index=1)
    with pytest.raises(InvalidValue):
        decode_checkpoint(hashlib.sha256(b"other").hexdigest(), value)
    for i in range(0, len(value), 7):  # every byte flip is caught (checksum or structure)
        flipped = bytearray(value)
        flipped[i] ^= 0x55
        try:
            decoded = decode_checkpoint(DIGEST, bytes(flipped))
        except InvalidValue:
            continue
        assert decoded == example_state()  # only a flip that msgpack ignores could pass
    bad_weight = dataclasses.replace(
        example_state(),
        particles=(dataclasses.replace(example_state().particles[0], log_weight=float("inf")),) * 2,
    )
    with pytest.raises(ValueError):
        encode_checkpoint(DIGEST, bad_weight)


def test_completed_smc_results_round_trip_with_their_statistics() -> None:
    stats = SmcStats(particles=16, sweeps=3, accepted_sweeps=1, resamples=4, ess_min=0.25, unique_ancestors=2,
                     log_z_hat=-12.5)  # fmt: skip
    results = [
        result(0, method="smc", smc=stats),
        result(1, method="smc", smc=dataclasses.replace(stats, sweeps=2)),
    ]
    assert decode_completed(DIGEST, encode_completed(DIGEST, results)) == results
    with pytest.raises(ValueError):
        encode_completed(DIGEST, [result(0, smc=dataclasses.replace(stats, ess_min=2.0))])


def test_completed_answers_written_before_smc_existed_still_read() -> None:
    from powersampling.cache import redis_cache

    value = encode_completed(DIGEST, [result(0)])
    envelope = msgpack.unpackb(value)
    body = msgpack.unpackb(envelope["body"])
    del body["results"][0]["smc"]
    old = redis_cache._seal(DIGEST, redis_cache.COMPLETED_TYPE, body)
    assert decode_completed(DIGEST, old) == [result(0)]


# --------------------------------------------------------------------------------------------- runs


def smc_params(**overrides: object) -> SamplingParams:
    options: dict[str, object] = {
        "method": "smc", "alpha": 4.0, "particles": 6, "sweeps": 3, "max_new_tokens": 24, "chunk_size": 4,
        "seed": 99, "n": 2,
    }  # fmt: skip
    options.update(overrides)
    return SamplingParams(**options)  # type: ignore[arg-type]


def comparable(results: list) -> list[dict]:
    return [r.to_dict() | {"latency_s": None, "resumed_from_block": None} for r in results]


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[RedisChainCache]:
    yield RedisChainCache.from_url(redis_server.url, cooldown_s=0.2)


async def test_a_completed_smc_answer_is_served_and_keyed_by_the_smc_fields(cache: RedisChainCache) -> None:
    first, status = await reason_cached(make_engine(), PROMPT, smc_params(), cache=cache)
    assert status is CacheStatus.MISS and all(r.smc is not None for r in first)
    engine = make_engine()
    again, status = await reason_cached(engine, PROMPT, smc_params(), cache=cache)
    assert status is CacheStatus.HIT and engine.tokens_generated == 0
    assert again == first
    other, status = await reason_cached(make_engine(), PROMPT, smc_params(particles=5), cache=cache)
    assert status is CacheStatus.MISS and other[0].smc is not None and other[0].smc.particles == 5
    key = request_key(engine.info.fingerprint, "", PROMPT, smc_params())
    assert key != request_key(engine.info.fingerprint, "", PROMPT, smc_params(chunk_size=5))
    await cache.close()


async def test_an_smc_request_interrupted_mid_sweep_resumes_to_the_same_answer(
    cache: RedisChainCache,
) -> None:
    uninterrupted = make_engine()
    reference, _ = await reason_cached(uninterrupted, PROMPT, smc_params(), cache=None)

    chunks = 0
    task: asyncio.Task[object] | None = None

    def on_event(event: SamplerEvent) -> None:
        nonlocal chunks
        if isinstance(event, SmcChunkFinished) and event.sweep_index == 1:
            chunks += 1
            if chunks == 3 and task is not None:
                task.cancel()

    task = asyncio.create_task(
        reason_cached(make_engine(), PROMPT, smc_params(), cache=cache, on_event=on_event)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    key = request_key(make_engine().info.fingerprint, "", PROMPT, smc_params())
    stored = await cache.get_checkpoints(key)
    assert set(stored) == {0, 1} and all(isinstance(s, SmcState) for s in stored.values())
    assert any(s.sweep_index == 1 and s.chunks_done > 0 for s in stored.values())

    engine = make_engine()
    reported: list[tuple[CacheStatus, int]] = []
    results, status = await reason_cached(
        engine, PROMPT, smc_params(), cache=cache, on_cache_status=lambda s, b: reported.append((s, b))
    )
    assert status is CacheStatus.RESUMED and reported[0][1] >= 6  # sweep 1 of 6-chunk sweeps, at least
    assert comparable(results) == comparable(reference)
    assert 0 < engine.tokens_generated < uninterrupted.tokens_generated
    # A stored checkpoint that does not fit the request (another chain seed) is never used.
    foreign = dataclasses.replace(stored[0], seed=stored[0].seed + 1)
    other_key = request_key(make_engine().info.fingerprint, "", PROMPT, smc_params(seed=100))
    await cache.put_checkpoint(other_key, foreign)
    assert (await cache.get_checkpoints(other_key)) == {0: foreign}
    _, status = await reason_cached(make_engine(), PROMPT, smc_params(seed=100), cache=cache)
    assert status is CacheStatus.MISS
    await cache.close()
