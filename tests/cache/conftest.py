"""Fixtures for the cache tests: a real redis-server per test (persistence off, in a temp dir).

Tests can stop, restart and corrupt their server freely; it is killed at the end of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from powersampling.engines.toy import ToyEngine

from .support import RedisServer, make_engine


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def engine() -> ToyEngine:
    return make_engine()
