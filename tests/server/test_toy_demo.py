"""The demo toy engine that `serve --engine toy` runs: bounded memory over many requests."""

from __future__ import annotations

import gc
import tracemalloc

from powersampling.api import reason_async
from powersampling.engines.toy import demo_engine


async def test_the_demo_engine_does_not_keep_memory_across_requests() -> None:
    engine = demo_engine()
    await engine.start()
    try:
        params = {"max_new_tokens": 400, "block_size": 40, "mcmc_steps": 4}
        await reason_async("hello", engine, seed=0, **params)  # warm-up: tables, imports
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for seed in range(1, 4):
                results = await reason_async("hello", engine, seed=seed, **params)
                assert results[0].tokens_spent > 400
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # Memoising every prefix kept ~20 MB per request of this size (1.5 GB at the paper's defaults).
        assert grown < 1_000_000, f"{grown / 1e6:.1f} MB kept after three requests"
    finally:
        await engine.close()
