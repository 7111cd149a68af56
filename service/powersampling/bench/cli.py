"""``powersampling bench``: quality benchmarks of the sampling methods.

    powersampling bench quality --dataset arithmetic --methods greedy,sample,low-temp,power,smc \\
        --alpha 4 --mcmc-steps 2 --particles 8 --samples 4 --limit 100 --seed 0 --out runs/arith
    powersampling bench report --out runs/arith        # rebuild summary and plots from the results

The same commands run as ``python -m powersampling.bench ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from powersampling.engines.factory import ENGINES, load_engine
from powersampling.errors import InvalidArgument, PowerSamplingError
from powersampling.params import SMC_FIELDS
from powersampling.sampling_flags import Flag, add_sampling_flags, positive_int, sampling_options

# The SamplingParams fields `bench quality` offers as flags (each problem's requests are built from
# them), with its own defaults and help where they differ from `reason`'s.
BENCH_FIELDS = (
    "alpha",
    "mcmc_steps",
    "block_size",
    "max_new_tokens",
    "proposal_temperature",
    "token_budget",
    *SMC_FIELDS,
    "stop",
)
BENCH_FLAGS = {
    "alpha": Flag(help="power of p (low-temp samples at 1/alpha)"),
    "mcmc_steps": Flag(default=2, help="MH steps per block (power)"),
    "block_size": Flag(default=None, help="power's block (default: one block)"),
    "max_new_tokens": Flag(default=None, help="default: the dataset's"),
    "proposal_temperature": Flag(help="default: 1/alpha"),
    "token_budget": Flag(help="proposal tokens per answer"),
    "stop": Flag(default=None, help="stop string (repeatable; default dataset's)"),
    "seed": Flag(default=0, help="dataset and sampling seed"),
}


def add_bench_command(subparsers: Any) -> None:
    """Register ``bench`` (with ``quality`` and ``report``) on an argparse subparsers object."""
    from powersampling.bench.datasets import DATASETS

    bench = subparsers.add_parser("bench", help="benchmark sampling methods on datasets")
    sub = bench.add_subparsers(dest="bench_command", metavar="{quality,report}")
    sub.required = True

    q = sub.add_parser(
        "quality",
        help="accuracy, pass@k and tokens of each method on a dataset",
        description="Run methods over a dataset; results are saved per problem, so a rerun resumes.",
    )
    q.add_argument("--dataset", default="arithmetic", help=f"one of {', '.join(DATASETS)}")
    q.add_argument("--methods", default="greedy,sample,low-temp,power", help="comma-separated method names")
    add_sampling_flags(q, BENCH_FIELDS, flags=BENCH_FLAGS, checked=True)
    q.add_argument("--samples", type=positive_int, default=4, help="samples per problem (pass@k up to it)")
    q.add_argument("--size", type=positive_int, default=None, help="problems generated (dataset default)")
    q.add_argument("--limit", type=positive_int, default=None, help="run the first LIMIT problems")
    q.add_argument("--tag", default=None, help="only problems with this tag (e.g. hard)")
    add_sampling_flags(q, ("seed",), flags=BENCH_FLAGS, checked=True)
    q.add_argument("--concurrency", type=positive_int, default=8, help="problems in flight at once")
    q.add_argument("--engine", default="torch", help=f"one of {', '.join(ENGINES)}")
    q.add_argument("--model", default=None, help="known model name or local folder (default model)")
    q.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda")
    q.add_argument("--out", type=Path, default=None, help="results folder (default runs/<dataset>)")
    q.add_argument("--no-resume", action="store_true", help="discard earlier results in --out")
    q.add_argument("--no-plot", action="store_true", help="skip the plots")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_guarded(run_quality_command))

    r = sub.add_parser("report", help="rebuild summary.json, summary.md and plots of a results folder")
    r.add_argument("--out", type=Path, required=True, help="results folder of an earlier run")
    r.add_argument("--no-plot", action="store_true", help="skip the plots")
    r.set_defaults(func=_guarded(run_report_command))


def _open_engine(kind: str, model: str | None, device: str = "auto") -> Any:
    if kind == "toy":
        # The quality benchmark's toy is the toy dataset's own exact model, not the demo toy.
        if model is not None:
            raise InvalidArgument("model", "the toy engine has a built-in model; leave --model out")
        from powersampling.bench.datasets import make_toy_engine

        return make_toy_engine()
    return load_engine(model, engine=kind, device=device)


def run_quality_command(args: argparse.Namespace) -> int:
    """The ``bench quality`` command; returns the exit status."""
    from powersampling.bench.datasets import default_size, load_dataset
    from powersampling.bench.runner import METHODS, BenchConfig, run_quality_async

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InvalidArgument("methods", "name at least one method")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InvalidArgument("methods", f"unknown method {unknown[0]!r}; use any of {', '.join(METHODS)}")
    if not args.alpha >= 1.0:
        raise InvalidArgument("alpha", f"must be at least 1, got {args.alpha}")
    if args.limit is not None and args.size is not None and args.limit > args.size:
        raise InvalidArgument("limit", f"{args.limit} exceeds --size {args.size}")
    size = args.size
    if size is None and args.limit is not None and args.limit > default_size(args.dataset):
        size = args.limit  # more problems than the default set: generate that many
    dataset = load_dataset(args.dataset, size=size, seed=args.seed)
    options = sampling_options(args, (*BENCH_FIELDS, "seed"))
    options["stop"] = tuple(args.stop) if args.stop else None
    cfg = BenchConfig(**options, samples=args.samples, concurrency=args.concurrency)
    out = args.out or Path("runs") / args.dataset
    engine = _open_engine(args.engine, args.model, args.device)

    async def go() -> dict[str, Any]:
        try:
            return await run_quality_async(
                engine,
                dataset,
                methods,
                cfg,
                out,
                limit=args.limit,
                tag=args.tag,
                resume=not args.no_resume,
                progress=not args.no_progress,
                plots=not args.no_plot,
            )
        finally:
            await engine.close()

    asyncio.run(go())
    print((out / "summary.md").read_text(), end="")
    print(f"results in {out}/ (summary.json, summary.md, results/*.jsonl{'' if args.no_plot else ', *.png'})")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    """The ``bench report`` command."""
    from powersampling.bench.report import rebuild_report

    rebuild_report(args.out, plots=not args.no_plot)
    print((args.out / "summary.md").read_text(), end="")
    return 0


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`command` with errors reported as one line on stderr, as the main command does: bad input
    (`powersampling: error: <field>: <message>`) exits with status 2, other failures with 1."""

    @functools.wraps(command)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except InvalidArgument as exc:
            print(f"powersampling: error: {exc.field}: {exc.message}".replace("\n", " "), file=sys.stderr)
            return 2
        except PowerSamplingError as exc:
            print(f"powersampling: error: {exc}".replace("\n", " "), file=sys.stderr)
            return 1

    return guarded


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``bench`` command."""
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m powersampling.bench``: the bench commands on their own."""
    parser = argparse.ArgumentParser(prog="powersampling")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_bench_command(subparsers)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return run(args)


__all__ = ["add_bench_command", "main", "run", "run_quality_command", "run_report_command"]
