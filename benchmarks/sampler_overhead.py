"""Sampler overhead: proposal tokens/s of power sampling versus plain sampling on the same engine.

Both run side by side in one process on the same engine. Power sampling spends its tokens in many
short proposals (each one re-reads its prefix), plain sampling in long runs; the sampler's own
bookkeeping is the wall time not spent inside the engine's batches.

    python benchmarks/sampler_overhead.py --model tiny-random
    python benchmarks/sampler_overhead.py --model qwen2.5-coder-0.5b-instruct --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from powersampling import reason_async
from powersampling.engines.base import BatchingEngine
from powersampling.engines.factory import load_engine


@dataclass
class Run:
    label: str
    tokens: int
    wall_s: float
    engine_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def bookkeeping(self) -> float:
        return 1.0 - self.engine_s / self.wall_s


async def measure(
    engine: BatchingEngine, label: str, prompt: str, target_tokens: int | None, **options
) -> Run:
    busy0, tokens0 = engine.busy_s, engine.tokens_generated
    started = time.perf_counter()
    tokens = 0
    seed = 0
    while True:
        results = await reason_async(prompt, engine, seed=seed, **options)
        tokens += sum(r.tokens_spent for r in results)
        seed += 1
        if target_tokens is None or tokens >= target_tokens:
            break
    wall = time.perf_counter() - started
    assert engine.tokens_generated - tokens0 == tokens
    return Run(label, tokens, wall, engine.busy_s - busy0)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt", default="What is 17 + 25? Explain briefly.")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--mcmc-steps", type=int, default=4)
    parser.add_argument("--chains", type=int, default=8, help="concurrent chains (n samples)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    engine = load_engine(args.model, engine="torch", device=args.device)
    assert isinstance(engine, BatchingEngine)
    common = dict(max_new_tokens=args.max_new_tokens, n=args.chains)
    await reason_async(args.prompt, engine, method="sample", max_new_tokens=4, n=2, seed=0)  # warm-up
    print(
        f"model {engine.info.model} on {engine.info.device}; {args.chains} chains, T={args.max_new_tokens}, "
        f"B={args.block_size}, N={args.mcmc_steps}"
    )
    print(f"{'run':<8} {'tokens':>8} {'wall s':>8} {'tok/s':>8} {'engine s':>9} {'bookkeeping':>12}")
    for rep in range(args.repeats):
        power = await measure(
            engine,
            "power",
            args.prompt,
            None,
            method="power",
            block_size=args.block_size,
            mcmc_steps=args.mcmc_steps,
            **common,
        )
        plain = await measure(engine, "plain", args.prompt, power.tokens, method="sample", **common)
        for run in (power, plain):
            print(
                f"{run.label:<8} {run.tokens:>8} {run.wall_s:>8.2f} {run.tokens_per_s:>8.1f} "
                f"{run.engine_s:>9.2f} {run.bookkeeping:>11.1%}"
            )
        print(
            f"repeat {rep}: power/plain tokens/s = {power.tokens_per_s / plain.tokens_per_s:.2f}; "
            f"sampler bookkeeping = {power.bookkeeping:.1%} of wall time"
        )
    await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
