"""Two `powersampling serve` replicas on one Redis: a seeded request whose replica is SIGKILLed
mid-way is re-sent to the other, which resumes it from the checkpoints in Redis and answers exactly
what an uninterrupted run answers (the story docs/scaling.md tells)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.api import reason_async
from powersampling.engines.toy import demo_engine
from powersampling.params import SamplingParams

from .replicas import ServeProcess, assert_same_answer, kill_mid_request, reason_request, stream
from .support import RedisServer

SECRET = "the secret both replicas are given"
PROMPT_IDS = [1, 2, 3]
# 8 chains of 64 blocks: a couple of seconds on the demo toy model, so the kill lands mid-way.
PARAMS = SamplingParams(alpha=4.0, block_size=8, max_new_tokens=512, mcmc_steps=4, seed=2027, n=8)


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[list[ServeProcess]]:
    started = [ServeProcess(redis_server.url, secret=SECRET) for _ in range(2)]
    yield started
    for replica in started:
        replica.kill()


async def test_a_request_killed_on_one_replica_resumes_on_the_other(
    redis_server: RedisServer, replicas: list[ServeProcess]
) -> None:
    first, second = replicas
    request = reason_request(PROMPT_IDS, PARAMS, tenant="replicas")
    before, events = kill_mid_request(first, second, request, redis_server.url)
    assert before[0].started.cache_status == pb.CACHE_STATUS_MISS
    assert [e.WhichOneof("event") for e in before] == ["started", "progress"]  # killed mid-way
    assert first.process.returncode == -9

    assert events[0].HasField("started") and events[-1].HasField("final")
    assert events[0].started.cache_status == pb.CACHE_STATUS_RESUMED
    assert events[0].started.resumed_from_block >= 1
    final = events[-1].final
    assert final.cache_status == pb.CACHE_STATUS_RESUMED

    engine = demo_engine()
    try:
        expected = await reason_async(PROMPT_IDS, engine, PARAMS)
    finally:
        await engine.close()
    assert len(final.answers) == len(expected) == PARAMS.n
    for answer, want in zip(final.answers, expected, strict=True):
        assert_same_answer(answer, want)

    # Finished on the second replica, the request is a hit on any replica sharing the secret.
    third = ServeProcess(redis_server.url, secret=SECRET)
    replicas.append(third)
    events = list(stream(third.target, request))
    assert events[-1].final.cache_status == pb.CACHE_STATUS_HIT
    assert [list(a.token_ids) for a in events[-1].final.answers] == [w.token_ids for w in expected]
