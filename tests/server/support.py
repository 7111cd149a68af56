"""Helpers of the server tests: toy engines, an in-memory cache, recording telemetry, call helpers."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.api import ReasonResult
from powersampling.cache.base import CacheKey
from powersampling.engines.toy import ToyEngine
from powersampling.events import ChainState, SamplerEvent
from powersampling.results import CacheStatus
from powersampling.server.app import RunningServer

# A six-token toy language: the prompt is text over "abc?" (spaces ignored), answers too.
TOKENS = ["</s>", "a", "b", "c", "?", " "]
EOS = 0
REASON_METHOD = "/powersampling.v1.ReasoningService/Reason"


def environment_without_server_settings() -> dict[str, str]:
    """os.environ less POWERSAMPLING_* (server settings) and OTEL_* (telemetry set-up)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("POWERSAMPLING_", "OTEL_"))}


@pytest.fixture(autouse=True)
def no_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import into a test module (or conftest): server settings come from the tests, not the machine."""
    for name in list(os.environ):
        if name.startswith("POWERSAMPLING_"):
            monkeypatch.delenv(name)


# The `start_server` fixture: start(engine=None, *, cache=None, telemetry=None, wait_ready=True, **settings)
StartServer = Callable[..., Awaitable[RunningServer]]


def _table(prefix: tuple[int, ...]) -> list[float]:
    """Next token depends on the last one; EOS is rare enough that answers span several blocks."""
    last = prefix[-1] if prefix else 1
    rows = {
        0: [0.02, 0.40, 0.30, 0.20, 0.04, 0.04],
        1: [0.02, 0.20, 0.50, 0.20, 0.04, 0.04],
        2: [0.03, 0.30, 0.20, 0.40, 0.03, 0.04],
        3: [0.03, 0.50, 0.20, 0.20, 0.03, 0.04],
        4: [0.10, 0.30, 0.30, 0.20, 0.05, 0.05],
        5: [0.02, 0.38, 0.30, 0.20, 0.05, 0.05],
    }
    return [math.log(p) for p in rows[last]]


class CountingTable:
    """A next-token table that counts its calls and may sleep in each (a slow model).

    With the engine's memo cache off, every generated token costs one call, so `calls` measures
    engine work directly, including work inside a batch that is still running.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, prefix: tuple[int, ...]) -> list[float]:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return _table(prefix)


def toy_engine(delay_s: float = 0.0, *, max_context_tokens: int = 4096) -> ToyEngine:
    """A ToyEngine over TOKENS; with delay_s > 0 every token takes that long (memo cache off)."""
    table = CountingTable(delay_s)
    engine = ToyEngine(
        vocab_size=len(TOKENS),
        eos_id=EOS,
        next_token_logprobs=table,
        token_strings=TOKENS,
        name="toy-test",
        fingerprint="toy-test-v1",
        max_context_tokens=max_context_tokens,
        cache_size=0 if delay_s else 1 << 16,
    )
    engine.table = table  # type: ignore[attr-defined]
    return engine


class SlowStartEngine(ToyEngine):
    """A toy engine that is not ready until `release()` is called (a model still loading)."""

    def __init__(self) -> None:
        super().__init__(
            vocab_size=len(TOKENS),
            eos_id=EOS,
            next_token_logprobs=_table,
            token_strings=TOKENS,
            name="toy-slow-start",
        )
        self._released = asyncio.Event()
        self._ready = False

    def release(self) -> None:
        self._released.set()

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await self._released.wait()
        self._ready = True


class MemoryCache:
    """A dict-backed ChainCache (the Redis one is tested on its own)."""

    def __init__(self) -> None:
        self.completed: dict[CacheKey, list[ReasonResult]] = {}
        self.checkpoints: dict[CacheKey, dict[int, ChainState]] = {}

    async def get_completed(self, key: CacheKey) -> list[ReasonResult] | None:
        return self.completed.get(key)

    async def put_completed(self, key: CacheKey, results: Sequence[ReasonResult]) -> None:
        self.completed[key] = list(results)

    async def get_checkpoints(self, key: CacheKey) -> dict[int, ChainState]:
        return dict(self.checkpoints.get(key, {}))

    async def put_checkpoint(self, key: CacheKey, state: ChainState) -> None:
        self.checkpoints.setdefault(key, {})[state.chain_index] = state

    async def close(self) -> None:
        pass


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_cache_status(self, status: CacheStatus, resumed_from_block: int) -> None:
        self.calls.append(("cache_status", status))

    def on_event(self, event: SamplerEvent) -> None:
        self.calls.append(("event", event))

    def on_first_event_sent(self) -> None:
        self.calls.append(("first_event_sent", None))

    def finish(self, results: Sequence[ReasonResult] | None, error: BaseException | None = None) -> None:
        self.calls.append(("finish", (results, error)))


class RecordingTelemetry:
    """Telemetry that records what the server reports."""

    def __init__(self, interceptors: Sequence[Any] = ()) -> None:
        self.requests: list[tuple[dict[str, Any], RecordingObserver]] = []
        self.queue_depths: list[int] = []
        self.rejections: list[str] = []
        self.interceptors = list(interceptors)
        self.shut_down = False

    def request(self, **attributes: Any) -> RecordingObserver:
        observer = RecordingObserver()
        self.requests.append((attributes, observer))
        return observer

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depths.append(depth)

    def record_rejection(self, reason: str) -> None:
        self.rejections.append(reason)

    def server_interceptors(self) -> Sequence[Any]:
        return self.interceptors

    def shutdown(self) -> None:
        self.shut_down = True


def small_request(**fields: Any) -> pb.ReasonRequest:
    """A quick power-sampling request: 3 blocks of 4 tokens, 3 MCMC steps each, seeded."""
    if not {"text", "messages", "token_ids"} & fields.keys():
        fields["text"] = "abc?"
    fields.setdefault("max_new_tokens", 12)
    fields.setdefault("block_size", 4)
    fields.setdefault("mcmc_steps", 3)
    fields.setdefault("seed", 7)
    return pb.ReasonRequest(**fields)


async def collect(
    stub: pb_grpc.ReasoningServiceStub, request: pb.ReasonRequest, **kwargs: Any
) -> list[pb.ReasonEvent]:
    return [event async for event in stub.Reason(request, **kwargs)]


async def rpc_error(stub: pb_grpc.ReasoningServiceStub, request: Any, **kwargs: Any) -> grpc.aio.AioRpcError:
    """The error a Reason call ends with (fails the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request, **kwargs)
    return info.value


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
