"""Power-SMC against block-wise MH and plain sampling, side by side in one run (see docs/smc.md).

For every problem of every set and seed, each method answers in turn (interleaved, so that a noisy
machine slows them alike): plain sampling at T = 1, block-wise MH over p^alpha (the paper's N steps
per block, the block scaled to the set's answer length), and Power-SMC at several particle counts.
Per method: accuracy, wall time per answer, tokens per answer (every token the engine generated for
it) and latency as a multiple of plain decoding on the same engine and problems.

    flock /tmp/powersampling-bench.lock python benchmarks/smc_vs_mh.py \\
        --sets arithmetic:100,chain_sum:20 --seeds 0,1,2 --particles 4,8,16 --engines torch,vllm

Sets are `powersampling bench` datasets (`NAME[:PROBLEMS]`); the few-shot arithmetic set has
10-token answers, reasoning-gym's chain_sum and gsm_symbolic multi-step answers of 100+ tokens. The
vLLM engine runs when vllm is importable and is skipped (with a note) otherwise. Rows go to
<out>/rows.jsonl as they finish (a rerun with the same --out resumes), the table to
<out>/summary.md and summary.json (`--report` rebuilds them from the rows of a run cut short: only
problems that every method answered count). `--engines toy --sets toy:10` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powersampling import reason_async
from powersampling.bench.datasets import Dataset, load_dataset
from powersampling.bench.metrics import wilson_interval
from powersampling.bench.runner import problem_seed
from powersampling.engines.base import Engine

BASELINE = "sample"


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    options: dict[str, Any]
    description: str


def methods_for(dataset: Dataset, args: argparse.Namespace) -> list[Method]:
    """The compared methods with the set's generation settings."""
    tokens = args.max_new_tokens or dataset.max_new_tokens
    gen = {"max_new_tokens": tokens, "stop": tuple(dataset.stop)}
    block = math.ceil(tokens / args.mh_blocks)
    chunk = args.chunk_size or max(1, math.ceil(tokens / 8))
    methods = [
        Method(BASELINE, {"method": "sample", **gen}, "plain sampling, T = 1"),
        Method(
            "mh",
            {"method": "power", "alpha": args.alpha, "mcmc_steps": args.mh_steps, "block_size": block, **gen},
            f"block MH, alpha {args.alpha:g}, N = {args.mh_steps}, B = {block}",
        ),
    ]
    for n in args.particles:
        smc = {
            "method": "smc",
            "alpha": args.alpha,
            "particles": n,
            "sweeps": args.sweeps,
            "chunk_size": chunk,
        }
        methods.append(
            Method(
                f"smc-{n}",
                {**smc, **gen},
                f"Power-SMC, alpha {args.alpha:g}, {n} particles x {args.sweeps} sweep(s), chunk {chunk}",
            )
        )
    return methods


def open_engine(kind: str, args: argparse.Namespace) -> Engine | None:
    """The engine, or None (with a note on stderr) when it cannot run here."""
    if kind == "toy":
        from powersampling.bench.datasets import make_toy_engine

        return make_toy_engine()
    if kind == "vllm" and importlib.util.find_spec("vllm") is None:
        print("vllm: not installed here; skipped (see scripts/install_vllm_cpu.sh)", file=sys.stderr)
        return None
    from powersampling.engines.factory import load_engine
    from powersampling.models import DEFAULT_MODEL

    return load_engine(args.model or DEFAULT_MODEL, engine=kind, device=args.device)


def parse_sets(text: str) -> list[tuple[str, int | None]]:
    sets = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, count = item.partition(":")
        sets.append((name, int(count) if count else None))
    return sets


def load_rows(path: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            rows[_key(row)] = row
    return rows


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["engine"], row["set"], row["seed"], row["method"], row["problem"])


async def run_engine(kind: str, engine: Engine, args: argparse.Namespace, rows_path: Path) -> None:
    done = load_rows(rows_path)
    if not engine.ready:
        await engine.start()
    warmed = False
    with rows_path.open("a", encoding="utf-8") as sink:
        for set_name, count in parse_sets(args.sets):
            for seed in args.seeds:
                dataset = load_dataset(set_name, size=count, seed=seed)
                methods = methods_for(dataset, args)
                for i, problem in enumerate(dataset.problems):
                    if not warmed:
                        # Untimed: an engine's first requests pay for compilation and allocation.
                        for options in (
                            {"method": "sample"},
                            {"method": "smc", "particles": 2, "chunk_size": 2},
                        ):
                            await reason_async(
                                problem.prompt, engine, chat=dataset.chat, seed=0, max_new_tokens=4, **options
                            )
                        warmed = True
                    for method in methods:
                        key = (kind, set_name, seed, method.name, problem.id)
                        if key in done:
                            continue
                        started = time.perf_counter()
                        (result,) = await reason_async(
                            problem.prompt,
                            engine,
                            chat=dataset.chat,
                            seed=problem_seed(seed, problem.id),
                            **method.options,
                        )
                        wall = time.perf_counter() - started
                        grade = dataset.grade(problem, result.text)
                        row = {
                            "engine": kind,
                            "set": set_name,
                            "seed": seed,
                            "method": method.name,
                            "description": method.description,
                            "problem": problem.id,
                            "correct": bool(grade.correct),
                            "score": grade.score,
                            "wall_s": wall,
                            "tokens_spent": result.tokens_spent,
                            "answer_tokens": len(result.token_ids),
                            "finish_reason": result.finish_reason,
                            "smc": None if result.smc is None else _plain(result.smc),
                        }
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        done[key] = row
                    if not args.quiet:
                        print(
                            f"{kind} {set_name} seed {seed}: {i + 1}/{len(dataset)} problems", file=sys.stderr
                        )


def _plain(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (engine, set, method): accuracy, wall time and tokens per answer, x plain decoding.

    Only the (seed, problem) pairs that every method of the set answered count (a run cut short
    leaves a partial problem); the multiple compares mean wall times over those pairs."""
    methods: dict[tuple[str, str], set[str]] = defaultdict(set)
    answered: dict[tuple[str, str, int, str], set[str]] = defaultdict(set)
    for row in rows:
        methods[(row["engine"], row["set"])].add(row["method"])
        answered[(row["engine"], row["set"], row["seed"], row["problem"])].add(row["method"])
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = (row["engine"], row["set"])
        if answered[(*key, row["seed"], row["problem"])] == methods[key]:
            groups[key][row["method"]].append(row)
    lines = []
    for (engine, set_name), by_method in groups.items():
        baseline = {(r["seed"], r["problem"]): r for r in by_method.get(BASELINE, [])}
        for method, items in by_method.items():
            n = len(items)
            correct = sum(r["correct"] for r in items)
            ci = wilson_interval(correct, n)
            paired = [
                (r["wall_s"], baseline[(r["seed"], r["problem"])]["wall_s"])
                for r in items
                if (r["seed"], r["problem"]) in baseline
            ]
            smc = [r["smc"] for r in items if r["smc"]]
            lines.append(
                {
                    "engine": engine,
                    "set": set_name,
                    "method": method,
                    "description": items[0]["description"],
                    "answers": n,
                    "accuracy": ci.value,
                    "accuracy_low": ci.low,
                    "accuracy_high": ci.high,
                    "wall_s_mean": statistics.fmean(r["wall_s"] for r in items),
                    "tokens_mean": statistics.fmean(r["tokens_spent"] for r in items),
                    "answer_tokens_mean": statistics.fmean(r["answer_tokens"] for r in items),
                    "x_plain": (sum(a for a, _ in paired) / sum(b for _, b in paired) if paired else None),
                    "resamples_mean": statistics.fmean(s["resamples"] for s in smc) if smc else None,
                    "ess_min_mean": statistics.fmean(s["ess_min"] for s in smc) if smc else None,
                }
            )
    return lines


def markdown(lines: list[dict[str, Any]]) -> str:
    out = [
        "| engine | set | method | answers | accuracy [95% CI] | wall s/answer | x plain | tokens/answer "
        "| answer tokens | resamples | ESS min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        multiple = f"{x['x_plain']:.2f}x" if x["x_plain"] is not None else "-"
        res = f"{x['resamples_mean']:.1f}" if x["resamples_mean"] is not None else "-"
        ess = f"{x['ess_min_mean']:.2f}" if x["ess_min_mean"] is not None else "-"
        out.append(
            f"| {x['engine']} | {x['set']} | {x['method']} | {x['answers']} | {x['accuracy']:.2f} "
            f"[{x['accuracy_low']:.2f}, {x['accuracy_high']:.2f}] | {x['wall_s_mean']:.2f} | {multiple} "
            f"| {x['tokens_mean']:.1f} | {x['answer_tokens_mean']:.1f} | {res} | {ess} |"
        )
    return "\n".join(out) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--engines", default="torch,vllm", help="comma-separated: torch, vllm (skipped if absent), toy"
    )
    p.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--sets", default="arithmetic:100,chain_sum:10", help="NAME[:PROBLEMS],... (bench datasets)"
    )
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated dataset and sampling seeds")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: each set's own")
    p.add_argument("--mh-steps", type=int, default=10, help="MH steps per block (paper: 10)")
    p.add_argument("--mh-blocks", type=int, default=4, help="MH blocks per answer: B = max_new_tokens / this")
    p.add_argument("--particles", type=_ints, default=[4, 8, 16], help="comma-separated SMC particle counts")
    p.add_argument("--sweeps", type=int, default=1, help="SMC sweeps (1: plain SMC; more: PIMH)")
    p.add_argument("--chunk-size", type=int, default=None, help="SMC chunk; default max_new_tokens / 8")
    p.add_argument("--out", type=Path, default=Path("runs/smc_vs_mh"))
    p.add_argument("--no-resume", action="store_true", help="discard the rows of an earlier run in --out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true", help="only rebuild the summary from <out>/rows.jsonl")
    return p


async def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    settings_path = args.out / "settings.json"
    unrelated = ("out", "no_resume", "quiet", "engines", "sets", "report")
    settings = json.loads(
        json.dumps({k: v for k, v in vars(args).items() if k not in unrelated}, default=str)
    )
    if args.no_resume:
        rows_path.unlink(missing_ok=True)
    elif args.report:
        pass  # only the summary is rebuilt, whatever settings made the rows
    elif rows_path.exists() and settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        print(f"{args.out}: holds rows of other settings; use another --out or --no-resume", file=sys.stderr)
        return 2
    if not args.report:
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for kind in [] if args.report else filter(None, (e.strip() for e in args.engines.split(","))):
        engine = open_engine(kind, args)
        if engine is None:
            continue
        try:
            await run_engine(kind, engine, args, rows_path)
        finally:
            await engine.close()
    lines = summarise(list(load_rows(rows_path).values()))
    table = markdown(lines)
    (args.out / "summary.json").write_text(
        json.dumps({"started": started, "argv": sys.argv, "lines": lines}, indent=2)
    )
    (args.out / "summary.md").write_text(f"Run started {started}: {' '.join(sys.argv)}\n\n{table}")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
