"""Latency of plain decoding, block MH and Power-SMC at a fixed answer length, side by side in one run.

Where `smc_vs_mh.py` measures accuracy and cost on real problems, this measures only cost: one
request at a time on the torch engine, each method in turn on the same prompts (interleaved, so a
noisy machine slows them alike), wall time per answer, tokens per answer and each method's latency
as a multiple of plain decoding and of MH. No stop strings: a random-weight model (which almost
never draws EOS) answers every prompt at exactly --max-new-tokens, so the figures compare like with
like. That is what a GPU without a model hub can measure:

    python benchmarks/method_latency.py --random-weights qwen2.5-7b --tokenizer DIR --device cuda
    python benchmarks/method_latency.py --model tiny-random --max-new-tokens 16 --particles 2,4   # smoke

MH runs the paper's N steps per block with the answer cut into --mh-blocks blocks (the paper: 3072
tokens in 16 blocks of 192, N = 10); SMC the given particle counts with chunks of T/8 tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from powersampling import reason_async
from powersampling.engines.base import Engine
from powersampling.engines.factory import load_engine, load_random_engine
from powersampling.models import DEFAULT_MODEL

PLAIN = "plain"
MH = "mh"

# Few-shot arithmetic prompts (the race's kind): only their length matters for latency.
_SHOTS = "".join(f"Q: What is {a} + {b}?\nA: {a + b}\n" for a, b in ((12, 30), (7, 8), (37, 48), (55, 19)))


@dataclass
class Timing:
    method: str
    description: str
    walls: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.mean(self.walls)

    @property
    def tokens_per_answer(self) -> float:
        return statistics.mean(self.tokens)


def methods(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, reason options) of every compared method."""
    t = args.max_new_tokens
    block = math.ceil(t / args.mh_blocks)
    chunk = args.chunk_size or max(1, math.ceil(t / 8))
    out = [
        (PLAIN, f"plain sampling at T = 1/alpha, {t} tokens", {"method": "low-temp", "alpha": args.alpha}),
        (
            MH,
            f"block MH, alpha {args.alpha:g}, N = {args.mh_steps}, {args.mh_blocks} blocks of {block}",
            {"method": "power", "alpha": args.alpha, "mcmc_steps": args.mh_steps, "block_size": block},
        ),
    ]
    for n in args.particles:
        out.append(
            (
                f"smc-{n}",
                f"Power-SMC, alpha {args.alpha:g}, {n} particles x {args.sweeps} sweep(s), chunk {chunk}",
                {
                    "method": "smc",
                    "alpha": args.alpha,
                    "particles": n,
                    "sweeps": args.sweeps,
                    "chunk_size": chunk,
                },
            )
        )
    return [(name, desc, {**opts, "max_new_tokens": t}) for name, desc, opts in out]


def open_engine(args: argparse.Namespace) -> Engine:
    if args.random_weights:
        return load_random_engine(
            args.random_weights, args.tokenizer, device=args.device, dtype=args.dtype or "bfloat16"
        )
    return load_engine(args.model, engine="torch", device=args.device, dtype=args.dtype or "auto")


def _sync(engine: Engine) -> None:
    if str(engine.info.device).startswith("cuda"):
        torch.cuda.synchronize()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    engine = open_engine(args)
    info = engine.info
    load_s = time.perf_counter() - started
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    device = info.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    print(
        f"{stamp}: {info.model} ({info.extra.get('dtype')}, {device}), loaded in {load_s:.1f} s; "
        f"{args.prompts} prompt(s), {args.max_new_tokens} new tokens",
        flush=True,
    )
    table = methods(args)
    prompts = [f"{_SHOTS}Q: What is {20 + k} + {33 + 2 * k}?\nA:" for k in range(args.prompts)]
    # Warm-up: kernels, allocator and caches, outside the timings.
    for _, _, opts in table:
        await reason_async(
            prompts[0], engine, chat=False, seed=99, **{**opts, "max_new_tokens": 4, **_short(opts)}
        )
    timings = {name: Timing(name, desc) for name, desc, _ in table}
    for k, prompt in enumerate(prompts):
        for name, _, opts in table:
            _sync(engine)
            t0 = time.perf_counter()
            (result,) = await reason_async(prompt, engine, chat=False, seed=k, **opts)
            _sync(engine)
            timing = timings[name]
            timing.walls.append(time.perf_counter() - t0)
            timing.tokens.append(result.tokens_spent)
            timing.answer_tokens.append(len(result.token_ids))
            print(
                f"  prompt {k} {name:<8} {timing.walls[-1]:8.2f} s  {result.tokens_spent:6d} tokens  "
                f"answer {len(result.token_ids)}",
                flush=True,
            )
    plain, mh = timings[PLAIN].wall, timings[MH].wall
    print(f"\n{'method':<8} {'wall s':>8} {'tokens':>8} {'tok/s':>8} {'x plain':>8} {'x MH':>7}  settings")
    rows = []
    for name, desc, _ in table:
        t = timings[name]
        row = {
            "method": name,
            "settings": desc,
            "wall_s": t.wall,
            "walls_s": t.walls,
            "tokens_per_answer": t.tokens_per_answer,
            "answer_tokens": t.answer_tokens,
            "tokens_per_s": t.tokens_per_answer / t.wall,
            "x_plain": t.wall / plain,
            "x_mh": t.wall / mh,
        }
        rows.append(row)
        print(
            f"{name:<8} {t.wall:8.2f} {t.tokens_per_answer:8.0f} {row['tokens_per_s']:8.1f} "
            f"{row['x_plain']:8.2f} {row['x_mh']:7.3f}  {desc}",
            flush=True,
        )
    memory = torch.cuda.max_memory_allocated() / 2**30 if info.device.startswith("cuda") else None
    if memory is not None:
        print(f"peak GPU memory allocated: {memory:.1f} GiB")
    await engine.close()
    return {
        "when": stamp,
        "model": info.model,
        "device": device,
        "args": vars(args),
        "rows": rows,
        "peak_gib": memory,
    }


def _short(opts: dict[str, Any]) -> dict[str, Any]:
    """Warm-up settings: a 4-token answer in blocks or chunks that fit it."""
    if opts["method"] == "power":
        return {"block_size": 2}
    if opts["method"] == "smc":
        return {"chunk_size": 2}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="a model name or folder (ignored with --random-weights)"
    )
    parser.add_argument(
        "--random-weights", metavar="ARCH", help="a random-weight model of this shape, e.g. qwen2.5-7b"
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer folder for --random-weights (default: the default model's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", help="default: bfloat16 with --random-weights, else the engine's choice")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--mh-steps", type=int, default=10)
    parser.add_argument("--mh-blocks", type=int, default=8)
    parser.add_argument("--particles", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8, 16, 32])
    parser.add_argument("--sweeps", type=int, default=1)
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
