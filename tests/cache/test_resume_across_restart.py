"""A server killed mid-request (SIGKILL) and started again resumes the re-sent request from Redis.

The server runs in a subprocess (tests/cache/slow_server.py) on a toy model that takes a little time
per batch, so the request is still running when the test kills it after its 2nd Progress event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.api import reason_async

from .replicas import assert_same_answer, reason_request
from .support import PROMPT, RedisServer, make_engine, seeded_params

REPO_ROOT = Path(__file__).resolve().parents[2]
SECONDS_PER_BATCH = 0.03  # 4 batches per block (extension + 3 MCMC steps): ~0.12 s per block
CACHE_SECRET = "a test secret shared by the servers"


class ServerProcess:
    """tests/cache/slow_server.py in a subprocess; `port` once it serves."""

    def __init__(self, redis_url: str, seconds_per_batch: float = SECONDS_PER_BATCH) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), str(REPO_ROOT / "service"), env.get("PYTHONPATH", "")]
        )
        env["POWERSAMPLING_CACHE_SECRET"] = CACHE_SECRET  # what lets the second server use the first's
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cache.slow_server", redis_url, str(seconds_per_batch)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it serves (or dies)
        if not line.startswith("PORT "):
            self.kill()
            pytest.fail(f"the server did not start (exit code {self.process.returncode})")
        self.port = int(line.split()[1])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def servers(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def request(seed: int = 4242) -> pb.ReasonRequest:
    return reason_request(PROMPT, seeded_params(seed=seed), tenant="restart-test")


def stream(port: int, req: pb.ReasonRequest) -> Iterator[pb.ReasonEvent]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield from pb_grpc.ReasoningServiceStub(channel).Reason(req, timeout=60)


async def test_a_killed_server_resumes_the_re_sent_request(
    redis_server: RedisServer, servers: list[ServerProcess]
) -> None:
    (expected,) = await reason_async(PROMPT, make_engine(), seeded_params(seed=4242))

    first = ServerProcess(redis_server.url)
    servers.append(first)
    progress = 0
    started_status = None
    for event in stream(first.port, request()):
        if event.HasField("started"):
            started_status = event.started.cache_status
        if event.HasField("progress"):
            progress += 1
            if progress == 2:
                first.kill()  # SIGKILL: no clean-up, like a crash or an OOM kill
                break
        assert not event.HasField("final"), "the request finished before the server was killed"
    assert started_status == pb.CACHE_STATUS_MISS and progress == 2

    second = ServerProcess(redis_server.url)
    servers.append(second)
    started_at = time.perf_counter()
    events = list(stream(second.port, request()))
    resumed_run_s = time.perf_counter() - started_at
    started = events[0].started
    assert events[0].HasField("started")
    assert started.cache_status == pb.CACHE_STATUS_RESUMED
    assert started.resumed_from_block >= 1
    final = events[-1].final
    assert events[-1].HasField("final") and final.cache_status == pb.CACHE_STATUS_RESUMED
    (answer,) = final.answers
    assert_same_answer(answer, expected)
    # Fewer blocks ran than in a whole run.
    progress_blocks = [e.progress.block_index for e in events if e.HasField("progress")]
    assert min(progress_blocks) >= started.resumed_from_block

    # And once finished, the same request is a hit.
    events = list(stream(second.port, request()))
    assert events[-1].final.cache_status == pb.CACHE_STATUS_HIT
    assert list(events[-1].final.answers[0].token_ids) == expected.token_ids
    assert resumed_run_s < 30
