"""A powersampling server on a slow toy model with a Redis cache, run as its own process.

    python -m tests.cache.slow_server REDIS_URL [SECONDS_PER_BATCH]

Prints `PORT <n>` on stdout once it serves, then runs until killed. The restart test kills it with
SIGKILL mid-request (a crash: nothing is flushed or closed) and starts another one. The benchmark
uses it with no delay. The cache settings come from POWERSAMPLING_CACHE_* variables, as in `serve`
(servers that are to share the cache's values need the same POWERSAMPLING_CACHE_SECRET).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

from powersampling.cache.redis_cache import RedisChainCache
from powersampling.config import ServerConfig
from powersampling.engines.base import ExtendRequest, Extension
from powersampling.engines.toy import ToyEngine
from powersampling.server.app import serve
from powersampling.telemetry.base import NoTelemetry

from .support import toy_engine_options


class SlowToyEngine(ToyEngine):
    """The cache tests' toy model, taking `seconds_per_batch` per batch (like a busy GPU)."""

    def __init__(self, seconds_per_batch: float) -> None:
        super().__init__(**toy_engine_options())
        self.seconds_per_batch = seconds_per_batch

    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        time.sleep(self.seconds_per_batch)  # on the engine's worker thread, not the event loop
        return super().extend_batch(requests)


async def main(redis_url: str, seconds_per_batch: float) -> None:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        engine="toy",
        reflection=False,
        max_concurrent_requests=64,
        max_queue=1024,
        redis_url=redis_url,
    )
    running = await serve(
        config,
        engine=SlowToyEngine(seconds_per_batch),
        cache=RedisChainCache.from_url(redis_url, **config.cache_options()),
        telemetry=NoTelemetry(),
    )
    await running.wait_ready(30.0)
    print(f"PORT {running.port}", flush=True)
    await running.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
