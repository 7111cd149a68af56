"""Power sampling on vLLM versus vLLM's own plain generation (and the same figures for the torch engine).

For each concurrency C (default 1, 4, 16) it runs, side by side on the same engine:

  power  C concurrent power-sampling requests (one chain each, different prompts and seeds); the
         figure is proposal tokens per second (initial extensions plus every MCMC proposal);
  plain  C concurrent plain generations of exactly as many tokens as the C power requests spent
         (request i generates what power request i spent, EOS ignored, no log-probabilities): on
         vLLM one vLLM request each, on the torch engine one `extend` each (batched by the engine).

and reports power/plain, and vLLM's prefix-cache hit rate over the power run (prompt tokens of
every proposal found in the cache / looked up). Proposals run at tau = 1/alpha in both modes.

    python benchmarks/vllm_throughput.py --engines vllm        # about 8 min on a 2-core CPU
    python benchmarks/vllm_throughput.py                       # both engines (torch: ~25 min more)
    python benchmarks/vllm_throughput.py --max-new-tokens 48 --block-size 16   # short proposals

Needs vllm (scripts/install_vllm_cpu.sh on a CPU). vLLM runs its model in its own processes, hence
the __main__ guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from powersampling import reason_async
from powersampling.engines.base import Engine, ExtendRequest
from powersampling.engines.factory import load_engine
from powersampling.models import DEFAULT_MODEL

# Questions with long answers, so that requests fill their blocks (short answers end at EOS early).
PROMPTS = [
    "Write a Python function that checks whether a number is prime, with a docstring and examples.",
    "Explain how a hash map works, step by step.",
    "Write a Python class for a stack with push, pop and peek, and show how to use it.",
    "Explain the difference between a process and a thread.",
    "Write a function that merges two sorted lists, and explain its complexity.",
    "Describe three ways to speed up a slow SQL query.",
    "Write a Python script that counts the words in a text file.",
    "Explain recursion to a beginner with an example in Python.",
]


@dataclass
class Row:
    engine: str
    concurrency: int
    power_tokens: int
    power_s: float
    plain_tokens: int
    plain_s: float
    acceptance: float
    prefix_cache_hit_rate: float | None

    @property
    def power_tps(self) -> float:
        return self.power_tokens / self.power_s

    @property
    def plain_tps(self) -> float:
        return self.plain_tokens / self.plain_s

    @property
    def ratio(self) -> float:
        return self.power_tps / self.plain_tps


async def plain_vllm(engine: Any, prompt: list[int], tokens: int, temperature: float, seed: int) -> int:
    """One plain vLLM request of exactly `tokens` tokens (EOS ignored, nothing but token ids back)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        temperature=temperature,
        seed=seed,
        max_tokens=tokens,
        ignore_eos=True,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    final = None
    async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=prompt), params, f"plain-{seed}"):
        final = out
    assert final is not None
    return len(final.outputs[0].token_ids)


async def plain_engine(engine: Engine, prompt: list[int], tokens: int, temperature: float, seed: int) -> int:
    """Plain generation through the engine contract (the torch engine: no EOS to ignore, so top up)."""
    done = 0
    while done < tokens:
        (ext,) = await engine.extend([ExtendRequest(tuple(prompt), tokens - done, temperature, seed + done)])
        done += len(ext.token_ids)
    return done


async def run_level(engine: Engine, name: str, concurrency: int, args: argparse.Namespace) -> Row:
    prompts = [engine.encode_prompt(PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)]
    options = {
        "alpha": args.alpha,
        "max_new_tokens": args.max_new_tokens,
        "block_size": args.block_size,
        "mcmc_steps": args.mcmc_steps,
    }
    stats = getattr(engine, "stats", None)
    q0, h0 = (stats.prefix_cache_queries, stats.prefix_cache_hits) if stats is not None else (0, 0)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(reason_async(p, engine, seed=1000 * concurrency + i, **options) for i, p in enumerate(prompts))
    )
    power_s = time.perf_counter() - started
    spent = [r[0].tokens_spent for r in results]
    steps = sum(r[0].mcmc_steps for r in results)
    acceptance = sum(r[0].accepted_steps for r in results) / steps if steps else 0.0
    hit_rate = None
    if stats is not None:
        queries = stats.prefix_cache_queries - q0
        hit_rate = (stats.prefix_cache_hits - h0) / queries if queries else 0.0

    tau = 1.0 / args.alpha
    plain = plain_vllm if name == "vllm" else plain_engine
    started = time.perf_counter()
    generated = await asyncio.gather(
        *(
            plain(engine, p, n, tau, 7 * concurrency + i)
            for i, (p, n) in enumerate(zip(prompts, spent, strict=True))
        )
    )
    plain_s = time.perf_counter() - started
    return Row(name, concurrency, sum(spent), power_s, sum(generated), plain_s, acceptance, hit_rate)


async def bench_engine(name: str, args: argparse.Namespace) -> list[Row]:
    kwargs: dict[str, Any] = {}
    if name == "vllm":
        kwargs = {"max_model_len": args.max_model_len, "max_num_seqs": max(args.concurrency) * 2}
    engine = load_engine(args.model, engine=name, **kwargs)
    rows = []
    try:
        started = time.perf_counter()
        await engine.start()
        # Warm-up: the first requests pay one-off costs (allocations, kernel selection).
        await reason_async(PROMPTS[0], engine, method="sample", max_new_tokens=4, seed=0)
        ready_s = time.perf_counter() - started
        print(f"{name}: ready in {ready_s:.1f} s ({engine.info.device}, {engine.info.extra})")
        for c in args.concurrency:
            row = await run_level(engine, name, c, args)
            rows.append(row)
            print_row(row)
        if name == "vllm":
            print(f"vllm engine stats: {json.dumps(engine.stats.as_dict())}")  # type: ignore[attr-defined]
    finally:
        await engine.close()
    return rows


def print_row(r: Row) -> None:
    hit = "-" if r.prefix_cache_hit_rate is None else f"{r.prefix_cache_hit_rate:.0%}"
    print(
        f"{r.engine:<6} C={r.concurrency:<3} power {r.power_tokens:>6} tok {r.power_s:>7.1f} s "
        f"{r.power_tps:>7.1f} tok/s | plain {r.plain_tokens:>6} tok {r.plain_s:>7.1f} s "
        f"{r.plain_tps:>7.1f} tok/s "
        f"| power/plain {r.ratio:>5.0%} | acceptance {r.acceptance:.2f} | prefix-cache hits {hit}",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--engines", nargs="+", default=["vllm", "torch"], choices=["vllm", "torch"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--alpha", type=float, default=4.0)
    # One block of the paper's size; --max-new-tokens 48 --block-size 16 shows short proposals.
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--block-size", type=int, default=192)
    parser.add_argument("--mcmc-steps", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    print(
        f"model {args.model}; alpha {args.alpha}, T={args.max_new_tokens}, B={args.block_size}, "
        f"N={args.mcmc_steps}; concurrency {args.concurrency}"
    )
    rows: list[Row] = []
    for name in args.engines:
        rows += await bench_engine(name, args)
    print("\nsummary (proposal tokens/s)")
    for r in rows:
        print_row(r)
    by = {(r.engine, r.concurrency): r for r in rows}
    top = max(args.concurrency)
    if ("vllm", top) in by:
        v = by["vllm", top]
        line = f"at C={top}: sampler on vLLM runs at {v.ratio:.0%} of plain vLLM"
        if ("torch", top) in by:
            line += f", {v.power_tps / by['torch', top].power_tps:.1f}x the sampler on the torch engine"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [asdict(r) | {"power_tps": r.power_tps, "plain_tps": r.plain_tps} for r in rows], f, indent=2
            )


if __name__ == "__main__":
    asyncio.run(main())
