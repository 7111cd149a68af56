"""Run sampling methods over a dataset and record every problem's samples as they finish.

    engine = load_engine("qwen2.5-coder-0.5b-instruct")
    dataset = load_dataset("arithmetic", size=100, seed=0)
    summary = run_quality(engine, dataset, ["greedy", "sample", "low-temp", "power", "smc"],
                          BenchConfig(alpha=4, mcmc_steps=2, samples=4), out_dir="runs/arith")

Methods come from a registry of :class:`MethodSpec` factories (``register_method``): the built-ins
call :func:`powersampling.api.reason_async` with their options; a later sampler can register a spec
with its own ``sample`` coroutine. Each problem's n samples are one request (``n`` chains batched in
the engine) and up to ``concurrency`` problems run at once, so the engine batches across problems too.

Results go to ``<out>/results/<method>.jsonl``, one line per problem, appended as problems finish. A
rerun with the same settings skips the problems already there (resume); a rerun with different
settings into the same folder is refused, so that one file never mixes two configurations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from powersampling.api import ReasonResult, reason_async
from powersampling.bench.datasets import Dataset, Problem
from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument
from powersampling.params import SMC_FIELDS, SamplingParams

SampleFn = Callable[[Engine, Problem, Dataset, int, int], Awaitable[list[ReasonResult]]]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Settings shared by every method of one run (None: the dataset's or the method's default)."""

    alpha: float = 4.0
    mcmc_steps: int = 2
    block_size: int | None = None  # power sampling's block; None: one block covering the answer
    max_new_tokens: int | None = None
    proposal_temperature: float | None = None
    token_budget: int | None = None
    samples: int = 4
    seed: int = 0
    concurrency: int = 8
    stop: tuple[str, ...] | None = None
    # Method smc (None: the method's default).
    particles: int | None = None
    sweeps: int | None = None
    resample_threshold: float | None = None
    chunk_size: int | None = None
    ramp_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InvalidArgument("samples", f"must be at least 1, got {self.samples}")
        if self.concurrency < 1:
            raise InvalidArgument("concurrency", f"must be at least 1, got {self.concurrency}")
        if self.seed < 0:
            raise InvalidArgument("seed", f"must be non-negative, got {self.seed}")


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One way of answering: options for `reason_async`, or a `sample` coroutine of its own.

    `deterministic` methods (greedy) draw one sample per problem; their pass@k equals their accuracy.
    """

    name: str
    options: dict[str, Any]
    deterministic: bool = False
    description: str = ""
    sample: SampleFn | None = field(default=None, compare=False)

    def identity(self) -> dict[str, Any]:
        """What makes two runs of this method comparable (goes into the resume check)."""
        return {"name": self.name, "options": self.options, "deterministic": self.deterministic}


MethodFactory = Callable[[BenchConfig, Dataset], MethodSpec]
METHODS: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make `name` usable in a run's method list; `factory` builds the spec from the run's settings."""
    if not name or "," in name or "/" in name:
        raise ValueError(f"bad method name {name!r}")
    METHODS[name] = factory


def _generation(cfg: BenchConfig, dataset: Dataset) -> dict[str, Any]:
    return {
        "max_new_tokens": cfg.max_new_tokens or dataset.max_new_tokens,
        "stop": tuple(cfg.stop if cfg.stop is not None else dataset.stop),
    }


def _greedy(cfg: BenchConfig, dataset: Dataset) -> MethodSpec:
    return MethodSpec("greedy", {"method": "greedy", **_generation(cfg, dataset)}, True, "argmax decoding")


def _sample(cfg: BenchConfig, dataset: Dataset) -> MethodSpec:
    return MethodSpec("sample", {"method": "sample", **_generation(cfg, dataset)}, False, "sampling at T = 1")


def _low_temp(cfg: BenchConfig, dataset: Dataset) -> MethodSpec:
    t = cfg.proposal_temperature or 1.0 / cfg.alpha
    opts = {"method": "low-temp", "alpha": cfg.alpha, "proposal_temperature": t, **_generation(cfg, dataset)}
    return MethodSpec("low-temp", opts, False, f"sampling at T = {t:g}")


def _power(cfg: BenchConfig, dataset: Dataset) -> MethodSpec:
    gen = _generation(cfg, dataset)
    block = cfg.block_size or gen["max_new_tokens"]
    opts: dict[str, Any] = {
        "method": "power",
        "alpha": cfg.alpha,
        "mcmc_steps": cfg.mcmc_steps,
        "block_size": block,
        **gen,
    }
    if cfg.proposal_temperature is not None:
        opts["proposal_temperature"] = cfg.proposal_temperature
    if cfg.token_budget is not None:
        opts["token_budget"] = cfg.token_budget
    return MethodSpec(
        "power", opts, False, f"block MH over p^{cfg.alpha:g}, N = {cfg.mcmc_steps}, B = {block}"
    )


def _smc(cfg: BenchConfig, dataset: Dataset) -> MethodSpec:
    opts: dict[str, Any] = {"method": "smc", "alpha": cfg.alpha, **_generation(cfg, dataset)}
    for name in ("proposal_temperature", "token_budget", *SMC_FIELDS):
        value = getattr(cfg, name)
        if value is not None:
            opts[name] = value
    shown = SamplingParams(**opts)  # validates the options now, naming a bad one, before any work
    return MethodSpec(
        "smc",
        opts,
        False,
        f"Power-SMC over p^{cfg.alpha:g}, {shown.effective_particles} particles x "
        f"{shown.effective_sweeps} sweep(s), chunk {shown.effective_chunk_size}",
    )


register_method("greedy", _greedy)
register_method("sample", _sample)
register_method("low-temp", _low_temp)
register_method("power", _power)
register_method("smc", _smc)


def resolve_methods(names: Sequence[str], cfg: BenchConfig, dataset: Dataset) -> list[MethodSpec]:
    """Specs for method names (unknown names are an error naming the known ones)."""
    if not names:
        raise InvalidArgument("methods", "name at least one method")
    specs = []
    for name in names:
        if name not in METHODS:
            raise InvalidArgument("methods", f"unknown method {name!r}; use any of {', '.join(METHODS)}")
        specs.append(METHODS[name](cfg, dataset))
    if len({s.name for s in specs}) != len(specs):
        raise InvalidArgument("methods", "a method is listed twice")
    return specs


def problem_seed(seed: int, problem_id: str) -> int:
    """The request seed of one problem: the same for every method (common random numbers)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=list).encode()).hexdigest()[:16]


def run_identity(engine: Engine, dataset: Dataset, spec: MethodSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Everything a method's results depend on; a resumed run must match it exactly."""
    info = engine.info
    return {
        "engine": info.engine,
        "model": info.model,
        "fingerprint": info.fingerprint,
        "dataset": dataset.describe(),
        "seed": cfg.seed,
        "samples": 1 if spec.deterministic else cfg.samples,
        "method": spec.identity(),
    }


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results file; a torn last line (a run killed mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise InvalidArgument("out", f"{path} line {i + 1} is not JSON; the file is damaged") from None
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write) so that appended records start on a new line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


async def _default_sample(
    spec: MethodSpec, engine: Engine, problem: Problem, dataset: Dataset, n: int, seed: int
) -> list[ReasonResult]:
    return await reason_async(problem.prompt, engine, chat=dataset.chat, n=n, seed=seed, **spec.options)


def _sample_record(result: ReasonResult, dataset: Dataset, problem: Problem) -> dict[str, Any]:
    grade = dataset.grade(problem, result.text)
    return {
        "text": result.text,
        "extracted": grade.extracted,
        "score": grade.score,
        "correct": grade.correct,
        "detail": grade.detail,
        "finish_reason": result.finish_reason,
        "tokens_spent": result.tokens_spent,
        "generated_tokens": len(result.token_ids),
        "token_ids": list(result.token_ids),
        "mcmc_steps": result.mcmc_steps,
        "accepted_steps": result.accepted_steps,
        "changed_steps": result.changed_steps,
        "skipped_steps": result.skipped_steps,
        "acceptance_rate": result.acceptance_rate,
        "change_rate": result.change_rate,
        "log_prob": result.log_prob,
        "smc": asdict(result.smc) if result.smc is not None else None,
    }


def _paths(out_dir: Path, spec: MethodSpec) -> tuple[Path, Path]:
    results_dir = out_dir / "results"
    return results_dir / f"{spec.name}.jsonl", results_dir / f"{spec.name}.identity.json"


def check_resumable(
    engine: Engine, dataset: Dataset, spec: MethodSpec, cfg: BenchConfig, out_dir: Path, *, resume: bool
) -> tuple[Path, str]:
    """The results file of `spec` and its settings key; raises when earlier results there were made
    with other settings (and `resume` is on)."""
    path, meta_path = _paths(out_dir, spec)
    key = _hash(run_identity(engine, dataset, spec, cfg))
    if resume and meta_path.exists():
        try:
            old = json.loads(meta_path.read_text()).get("key")
        except json.JSONDecodeError:
            old = None
        if old != key:
            raise InvalidArgument(
                "out",
                f"{path} holds results of other settings for method {spec.name!r} (see {meta_path.name}); "
                "use another --out or --no-resume",
            )
    return path, key


def _write_identity(
    engine: Engine, dataset: Dataset, spec: MethodSpec, cfg: BenchConfig, out_dir: Path
) -> None:
    identity = run_identity(engine, dataset, spec, cfg)
    _, meta_path = _paths(out_dir, spec)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(
        json.dumps({"key": _hash(identity), "identity": identity}, indent=2, default=list) + "\n"
    )


@dataclass(slots=True)
class MethodRun:
    """What one method's pass over the problems did in this process."""

    name: str
    done_before: int
    ran: int
    wall_s: float


async def run_method(
    engine: Engine,
    dataset: Dataset,
    problems: Sequence[Problem],
    spec: MethodSpec,
    cfg: BenchConfig,
    out_dir: Path,
    *,
    resume: bool = True,
    progress: bool = True,
) -> MethodRun:
    """Run `spec` on every problem not yet in its results file, appending records as they finish."""
    from tqdm.auto import tqdm

    path, key = check_resumable(engine, dataset, spec, cfg, out_dir, resume=resume)
    if not resume:
        path.unlink(missing_ok=True)
    _write_identity(engine, dataset, spec, cfg, out_dir)
    _drop_torn_tail(path)
    done = {r["id"] for r in load_records(path)}
    todo = [p for p in problems if p.id not in done]
    n = 1 if spec.deterministic else cfg.samples
    sample_fn: Callable[..., Awaitable[list[ReasonResult]]]
    if spec.sample is not None:
        sample_fn = spec.sample
    else:

        async def sample_fn(
            engine: Engine, problem: Problem, dataset: Dataset, n: int, seed: int
        ) -> list[ReasonResult]:
            return await _default_sample(spec, engine, problem, dataset, n, seed)

    semaphore = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(
        total=len(problems),
        initial=len(problems) - len(todo),
        desc=f"{dataset.name}/{spec.name}",
        unit="problem",
        disable=not progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    ran = 0

    with path.open("a", encoding="utf-8") as sink:

        async def one(problem: Problem) -> None:
            nonlocal ran
            async with semaphore:
                seed = problem_seed(cfg.seed, problem.id)
                t0 = time.perf_counter()
                results = await sample_fn(engine, problem, dataset, n, seed)
                latency = time.perf_counter() - t0
            samples = await asyncio.to_thread(lambda: [_sample_record(r, dataset, problem) for r in results])
            record = {
                "id": problem.id,
                "method": spec.name,
                "tags": list(problem.tags),
                "reference": problem.reference,
                "question": problem.data.get("question"),
                "seed": seed,
                "n": len(samples),
                "correct": sum(s["correct"] for s in samples),
                "latency_s": latency,
                "key": key,
                "samples": samples,
            }
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            ran += 1
            bar.update()
            steps = sum(s["mcmc_steps"] for s in samples)
            if steps:
                changed = sum(s["changed_steps"] for s in samples) / steps
                accepted = sum(s["accepted_steps"] for s in samples) / steps
                bar.set_postfix(accept=f"{accepted:.2f}", change=f"{changed:.2f}", refresh=False)

        try:
            async with asyncio.TaskGroup() as group:
                for problem in todo:
                    group.create_task(one(problem))
        finally:
            bar.close()
    wall = time.perf_counter() - started
    _add_wall_time(out_dir, spec.name, wall, ran)
    return MethodRun(spec.name, len(problems) - len(todo), ran, wall)


def _add_wall_time(out_dir: Path, method: str, wall_s: float, problems: int) -> None:
    """Accumulate a method's wall time over (resumed) runs in <out>/walltime.json."""
    path = out_dir / "walltime.json"
    data: dict[str, dict[str, float]] = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        data = json.loads(path.read_text())
    entry = data.setdefault(method, {"wall_s": 0.0, "problems": 0})
    entry["wall_s"] += wall_s
    entry["problems"] += problems
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


async def run_quality_async(
    engine: Engine,
    dataset: Dataset,
    methods: Sequence[str] | Sequence[MethodSpec],
    cfg: BenchConfig,
    out_dir: str | os.PathLike[str],
    *,
    limit: int | None = None,
    tag: str | None = None,
    resume: bool = True,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run every method (one after another, each batched across problems), then write the report.

    `tag` keeps only the problems carrying it (e.g. "hard"); `limit` then takes the first ones.
    """
    from powersampling.bench.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if limit is not None and limit < 1:
        raise InvalidArgument("limit", f"must be at least 1, got {limit}")
    if all(isinstance(m, str) for m in methods):
        specs = resolve_methods([str(m) for m in methods], cfg, dataset)
    elif all(isinstance(m, MethodSpec) for m in methods):
        specs = [m for m in methods if isinstance(m, MethodSpec)]
    else:
        raise InvalidArgument("methods", "pass method names or MethodSpecs, not a mix")
    problems = [p for p in dataset.problems if tag is None or tag in p.tags]
    if not problems:
        known = sorted({t for p in dataset.problems for t in p.tags})
        raise InvalidArgument(
            "tag", f"no problem of {dataset.name} has tag {tag!r} (tags: {', '.join(known)})"
        )
    problems = problems[:limit] if limit is not None else problems
    for spec in specs:  # refuse a mismatched folder before spending anything
        check_resumable(engine, dataset, spec, cfg, out, resume=resume)
    if not engine.ready:
        await engine.start()
    runs = [
        await run_method(engine, dataset, problems, spec, cfg, out, resume=resume, progress=progress)
        for spec in specs
    ]
    run_info = {
        "dataset": dataset.describe(),
        "problems": [p.id for p in problems],
        "config": asdict(cfg),
        "engine": {
            "engine": engine.info.engine,
            "model": engine.info.model,
            "fingerprint": engine.info.fingerprint,
        },
        "methods": [{"name": s.name, "description": s.description, **s.identity()} for s in specs],
        "this_run": [asdict(r) for r in runs],
    }
    return write_report(out, run_info, plots=plots)


def run_quality(
    engine: Engine,
    dataset: Dataset,
    methods: Sequence[str] | Sequence[MethodSpec],
    cfg: BenchConfig,
    out_dir: str | os.PathLike[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Synchronous :func:`run_quality_async`; returns the summary (also written to <out>/summary.json)."""
    return asyncio.run(run_quality_async(engine, dataset, methods, cfg, out_dir, **kwargs))


__all__ = [
    "METHODS",
    "BenchConfig",
    "MethodRun",
    "MethodSpec",
    "check_resumable",
    "load_records",
    "problem_seed",
    "register_method",
    "resolve_methods",
    "run_method",
    "run_quality",
    "run_quality_async",
]
