"""Client fixtures: a real server on a loopback port, run on its own thread and event loop so that
the blocking client, subprocesses and asyncio tests can all talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.server.app import RunningServer, serve
from powersampling.telemetry.base import NoTelemetry

from tests.server.support import environment_without_server_settings, toy_engine

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client" / "src"
if str(CLIENT_SOURCE) not in sys.path:  # the client distribution, when it is not installed
    sys.path.insert(0, str(CLIENT_SOURCE))


class ThreadedServer:
    """A started server and the event loop (on its own thread) that runs it."""

    def __init__(self, running: RunningServer, loop: asyncio.AbstractEventLoop) -> None:
        self.running = running
        self.loop = loop
        self.target = running.target

    def call(self, coroutine: Any, timeout_s: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


@contextlib.contextmanager
def server_in_thread(
    engine_factory: Callable[[], Engine] = toy_engine, telemetry: Any = None, **settings: Any
) -> Iterator[ThreadedServer]:
    with mock.patch.dict(os.environ, environment_without_server_settings(), clear=True):
        config = ServerConfig(host="127.0.0.1", port=0, **settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    engine = engine_factory()

    async def start() -> RunningServer:
        running = await serve(config, engine=engine, telemetry=telemetry or NoTelemetry())
        await running.wait_ready(10)
        return running

    try:
        running = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        try:
            yield ThreadedServer(running, loop)
        finally:
            asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(30)
    finally:
        asyncio.run_coroutine_threadsafe(engine.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    """One server on a fast toy engine for the whole module."""
    with server_in_thread() as threaded:
        yield threaded


@pytest.fixture
def client_environment() -> dict[str, str]:
    """Environment for a subprocess that imports the client from this checkout."""
    env = environment_without_server_settings()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_SOURCE), env.get("PYTHONPATH")]))
    return env
