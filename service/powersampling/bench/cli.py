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


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {n}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x


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
    q.add_argument("--alpha", type=float, default=4.0, help="power of p (low-temp samples at 1/alpha)")
    q.add_argument("--mcmc-steps", type=_non_negative_int, default=2, help="MH steps per block (power)")
    q.add_argument(
        "--block-size", type=_positive_int, default=None, help="power's block (default: one block)"
    )
    q.add_argument("--max-new-tokens", type=_positive_int, default=None, help="default: the dataset's")
    q.add_argument("--proposal-temperature", type=_positive_float, default=None, help="default: 1/alpha")
    q.add_argument("--token-budget", type=_positive_int, default=None, help="proposal tokens per answer")
    q.add_argument("--particles", type=_positive_int, default=None, help="particles per sweep (smc)")
    q.add_argument("--sweeps", type=_positive_int, default=None, help="sweeps, >1 for PIMH (smc)")
    q.add_argument(
        "--resample-threshold", type=_positive_float, default=None, help="ESS fraction in (0, 1] (smc)"
    )
    q.add_argument("--chunk-size", type=_positive_int, default=None, help="tokens between ESS checks (smc)")
    q.add_argument("--ramp-tokens", type=_non_negative_int, default=None, help="alpha-ramp length (smc)")
    q.add_argument(
        "--stop", action="append", default=None, help="stop string (repeatable; default dataset's)"
    )
    q.add_argument("--samples", type=_positive_int, default=4, help="samples per problem (pass@k up to it)")
    q.add_argument("--size", type=_positive_int, default=None, help="problems generated (dataset default)")
    q.add_argument("--limit", type=_positive_int, default=None, help="run the first LIMIT problems")
    q.add_argument("--tag", default=None, help="only problems with this tag (e.g. hard)")
    q.add_argument("--seed", type=_non_negative_int, default=0, help="dataset and sampling seed")
    q.add_argument("--concurrency", type=_positive_int, default=8, help="problems in flight at once")
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
    cfg = BenchConfig(
        alpha=args.alpha,
        mcmc_steps=args.mcmc_steps,
        block_size=args.block_size,
        max_new_tokens=args.max_new_tokens,
        proposal_temperature=args.proposal_temperature,
        token_budget=args.token_budget,
        samples=args.samples,
        seed=args.seed,
        concurrency=args.concurrency,
        stop=tuple(args.stop) if args.stop else None,
        particles=args.particles,
        sweeps=args.sweeps,
        resample_threshold=args.resample_threshold,
        chunk_size=args.chunk_size,
        ramp_tokens=args.ramp_tokens,
    )
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
