"""Server fixtures: a real grpc.aio server on a loopback port (port 0) over exact toy engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.server.app import RunningServer, serve
from powersampling.telemetry.base import NoTelemetry

from tests.server.support import StartServer, no_server_environment, toy_engine  # noqa: F401


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers on 127.0.0.1:0 (ToyEngine unless given); all are stopped after the test.

    start(engine=None, *, cache=None, telemetry=None, wait_ready=True, **ServerConfig fields)
    """
    started: list[tuple[RunningServer, Engine]] = []

    async def start(
        engine: Engine | None = None,
        *,
        cache: Any = None,
        telemetry: Any = None,
        wait_ready: bool = True,
        **settings: Any,
    ) -> RunningServer:
        settings.setdefault("drain_timeout_s", 5.0)
        config = ServerConfig(host="127.0.0.1", port=0, **settings)
        engine = engine if engine is not None else toy_engine()
        running = await serve(config, engine=engine, cache=cache, telemetry=telemetry or NoTelemetry())
        started.append((running, engine))
        if wait_ready:
            await running.wait_ready(10)
        return running

    yield start
    for running, engine in started:
        await running.stop(0)
        await engine.close()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """One ready server on a fast toy engine."""
    return await start_server()


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ReasoningServiceStub:
    return pb_grpc.ReasoningServiceStub(channel)
