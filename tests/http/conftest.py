"""HTTP API fixtures: real servers (gRPC + HTTP on loopback ports) over toy engines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.http.support import ServerThread
from tests.server.support import no_server_environment  # noqa: F401


@pytest.fixture
def start_http() -> Iterator[Callable[..., ServerThread]]:
    """start(engine=None, *, cache=None, telemetry=None, **ServerConfig fields): a ServerThread."""
    started: list[ServerThread] = []

    def start(engine: Any = None, **settings: Any) -> ServerThread:
        server = ServerThread(engine, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def http_server(start_http: Callable[..., ServerThread]) -> ServerThread:
    return start_http()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ServerThread]:
    """One server for a module's many small requests (the bad-input table)."""
    import os

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("POWERSAMPLING_")}
    server = ServerThread()
    try:
        yield server
    finally:
        server.stop()
        os.environ.update(saved)
