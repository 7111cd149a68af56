"""`powersampling serve` replicas in subprocesses (toy engine) on one Redis, for tests and the
reliability suite (benchmarks/reliability.py): start, wait until serving, SIGKILL, stream requests.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import redis
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.api import ReasonResult
from powersampling.cache.redis_cache import KEY_PREFIX
from powersampling.params import SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on [^ ]*:(\d+) ")


class ServeProcess:
    """`powersampling serve --engine toy` on `redis_url`, in a subprocess; `port` once it serves.

    Its log (stderr) is collected in `log_lines`. `secret` is given as POWERSAMPLING_CACHE_SECRET,
    as an operator would; nothing else comes from this process's POWERSAMPLING_* variables.
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        secret: str | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("POWERSAMPLING_")}
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT / "service"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        )
        if secret is not None:
            environment["POWERSAMPLING_CACHE_SECRET"] = secret
        environment.update(env or {})
        command = [sys.executable, "-m", "powersampling", "serve", "--engine", "toy"]
        command += ["--host", "127.0.0.1", "--port", "0", "--no-reflection"]
        if redis_url is not None:
            command += ["--redis-url", redis_url]
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log_lines: list[str] = []
        self.port = 0
        self._serving = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._serving.wait(start_timeout_s) or not self.port:
            self.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.log_lines[-20:]))

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # drained to the end, so the pipe never fills
            self.log_lines.append(line)
            if match := _LISTENING.search(line):
                self.port = int(match[1])
            if " serving " in line:
                self._serving.set()
        self._serving.set()  # it exited

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, like a crash or an OOM kill."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def reason_request(prompt_ids: Sequence[int], params: SamplingParams, tenant: str = "") -> pb.ReasonRequest:
    """The ReasonRequest of a seeded power-sampling request over token ids."""
    return pb.ReasonRequest(
        token_ids=pb.TokenIds(ids=list(prompt_ids)),
        method=pb.METHOD_POWER,
        alpha=params.alpha,
        block_size=params.block_size,
        max_new_tokens=params.max_new_tokens,
        mcmc_steps=params.mcmc_steps,
        seed=params.seed,
        n=params.n,
        tenant=tenant,
    )


def assert_same_answer(answer: pb.Answer, expected: ReasonResult) -> None:
    """An Answer of the service is the ReasonResult of a run in this process: tokens, text, stats."""
    assert list(answer.token_ids) == expected.token_ids
    assert answer.text == expected.text
    assert answer.stats.tokens_spent == expected.tokens_spent
    assert answer.stats.mcmc_steps == expected.mcmc_steps
    assert answer.stats.accepted == expected.accepted_steps
    assert answer.stats.changed == expected.changed_steps
    assert math.isclose(answer.stats.log_prob, expected.log_prob, rel_tol=1e-6, abs_tol=1e-12)


def stream(target: str, request: pb.ReasonRequest, timeout_s: float = 60.0) -> Iterator[pb.ReasonEvent]:
    """The events of one Reason call."""
    with grpc.insecure_channel(target) as channel:
        yield from pb_grpc.ReasoningServiceStub(channel).Reason(request, timeout=timeout_s)


def wait_for(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.005) -> bool:
    """Poll `condition()` until it is true or `timeout_s` has passed; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return False


def kill_mid_request(
    first: ServeProcess,
    second: ServeProcess,
    request: pb.ReasonRequest,
    redis_url: str,
    timeout_s: float = 60.0,
) -> tuple[list[pb.ReasonEvent], list[pb.ReasonEvent]]:
    """Send `request` to `first` and SIGKILL it mid-way, once a Progress event has come and a
    checkpoint is in Redis; then send the request to `second`. Returns the events of both calls.

    RuntimeError if the request finished on `first` before the kill (it must be long enough).
    """
    store = redis.Redis.from_url(redis_url)

    def checkpoint_stored() -> bool:
        return any(store.hlen(name) for name in store.scan_iter(f"{KEY_PREFIX}:*:chains"))

    before: list[pb.ReasonEvent] = []
    try:
        for event in stream(first.target, request, timeout_s):
            before.append(event)
            if event.HasField("final"):
                raise RuntimeError("the request finished before its replica was killed")
            if event.HasField("progress"):
                if not wait_for(checkpoint_stored, 10.0):
                    raise RuntimeError("no checkpoint reached Redis within 10 s")
                first.kill()
                break
    finally:
        store.close()
    return before, list(stream(second.target, request, timeout_s))
