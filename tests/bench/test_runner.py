"""The harness on the toy engine: known accuracies, records, resume, reports and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from powersampling.api import ReasonResult, reason_async
from powersampling.bench.cli import main as bench_main
from powersampling.bench.datasets import Dataset, Problem, ToyDataset, make_toy_engine, toy_power_accuracy
from powersampling.bench.report import rebuild_report
from powersampling.bench.runner import (
    BenchConfig,
    MethodSpec,
    load_records,
    problem_seed,
    resolve_methods,
    run_quality,
)
from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument

METHODS = ["greedy", "sample", "low-temp", "power"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("toy-run")
    summary = run_quality(
        make_toy_engine(),
        ToyDataset(size=60),
        METHODS,
        BenchConfig(samples=4, mcmc_steps=2),
        out,
        progress=False,
    )
    return out, summary


def test_known_accuracies(toy_run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = toy_run
    acc = {name: m["subsets"]["all"]["accuracy"] for name, m in summary["methods"].items()}
    assert acc["greedy"]["value"] == 1.0
    # Plain sampling answers right with probability 0.4; p^4 (and T = 1/4, which is p^4 per token
    # here) with probability 0.993. 240 samples: the intervals must cover the truth.
    assert acc["sample"]["low"] <= 0.4 <= acc["sample"]["high"]
    assert 0.3 < acc["sample"]["value"] < 0.5
    for name in ("power", "low-temp"):
        assert acc[name]["low"] <= toy_power_accuracy(4) <= acc[name]["high"]
        assert acc[name]["value"] > 0.95
    diff = summary["difference_vs_sample"]["power"]
    assert diff["low"] > 0.3  # power is measurably above T = 1


def test_pass_at_k_tokens_and_mcmc_stats(toy_run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = toy_run
    methods = summary["methods"]
    sample_pk = methods["sample"]["subsets"]["all"]["pass_at_k"]
    assert list(sample_pk) == ["1", "2", "3", "4"]
    assert sample_pk["1"] < sample_pk["2"] < sample_pk["3"] < sample_pk["4"]
    assert sample_pk["4"] == pytest.approx(1 - 0.6**4, abs=0.12)
    assert methods["greedy"]["subsets"]["all"]["pass_at_k"]["4"] == 1.0
    assert methods["greedy"]["samples_per_problem"] == 1
    assert {"easy", "hard"} <= set(methods["power"]["subsets"])
    assert methods["sample"]["token_multiplier"] == 1.0
    assert methods["power"]["token_multiplier"] > 1.5  # one extension plus two proposals per answer
    mcmc = methods["power"]["mcmc"]
    assert mcmc["steps_per_answer"] == 2.0
    assert 0.0 <= mcmc["change_rate"] <= mcmc["acceptance_rate"] <= 1.0
    assert methods["sample"]["mcmc"]["acceptance_rate"] is None


def test_diagnostics(toy_run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = toy_run
    target = summary["diagnostics"]["target_on_seen_answers"]["subsets"]["all"]
    # The right digit is always seen, wrong ones only in part: p's estimate is inflated, p^4's is not
    # (the unseen wrong digits carry almost nothing under p^4).
    assert 0.3 < target["seen_mass"] < 1.0
    assert 0.4 < target["p"] < 0.9
    assert target["p^alpha"] == pytest.approx(toy_power_accuracy(4), abs=0.01)
    assert 0.5 < target["p^alpha_is"] <= 1.0
    chains = summary["diagnostics"]["power_vs_low_temp"]
    assert chains["chains"] == 240
    assert chains["unchanged"] + chains["changed"] == 240
    assert "Power chains against low-temp's draw" in (toy_run[0] / "summary.md").read_text()


def test_outputs_written(toy_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = toy_run
    for name in ("summary.json", "summary.md", "run.json", "accuracy_vs_tokens.png", "pass_at_k.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["problems"] == 60
    md = (out / "summary.md").read_text()
    assert "| power |" in md and "pass@4" in md and "Subset `hard`" in md
    records = load_records(out / "results" / "power.jsonl")
    assert len(records) == 60 and len({r["id"] for r in records}) == 60
    r = records[0]
    assert r["n"] == 4 and len(r["samples"]) == 4
    assert r["seed"] == problem_seed(0, r["id"])
    assert {"text", "correct", "tokens_spent", "acceptance_rate", "change_rate"} <= set(r["samples"][0])
    assert rebuild_report(out, plots=False)["methods"].keys() == summary["methods"].keys()


def counting_spec(calls: list[str]) -> MethodSpec:
    async def sample(
        engine: Engine, problem: Problem, dataset: Dataset, n: int, seed: int
    ) -> list[ReasonResult]:
        calls.append(problem.id)
        return await reason_async(
            problem.prompt,
            engine,
            chat=False,
            n=n,
            seed=seed,
            method="sample",
            max_new_tokens=3,
            stop=("\n",),
        )

    return MethodSpec("counted", {"method": "sample", "max_new_tokens": 3}, sample=sample)


def test_resume_skips_done_problems(tmp_path: Path) -> None:
    engine, dataset, cfg = make_toy_engine(), ToyDataset(size=10), BenchConfig(samples=2)
    calls: list[str] = []
    run_quality(engine, dataset, [counting_spec(calls)], cfg, tmp_path, limit=4, progress=False, plots=False)
    assert sorted(calls) == [p.id for p in dataset.problems[:4]]
    # A killed run can leave a torn last line: it is dropped and that problem runs again.
    path = tmp_path / "results" / "counted.jsonl"
    lines = path.read_text().splitlines()
    torn = json.loads(lines[-1])["id"]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    calls.clear()
    summary = run_quality(engine, dataset, [counting_spec(calls)], cfg, tmp_path, progress=False, plots=False)
    assert sorted(calls) == sorted([torn] + [p.id for p in dataset.problems[4:]])
    assert summary["methods"]["counted"]["problems"] == 10
    calls.clear()
    run_quality(engine, dataset, [counting_spec(calls)], cfg, tmp_path, progress=False, plots=False)
    assert calls == []
    ids = [r["id"] for r in load_records(path)]
    assert len(ids) == len(set(ids)) == 10  # the torn line is gone, its problem recorded once
    run_quality(
        engine, dataset, [counting_spec(calls)], cfg, tmp_path, resume=False, progress=False, plots=False
    )
    assert len(calls) == 10


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    engine, dataset = make_toy_engine(), ToyDataset(size=4)
    run_quality(engine, dataset, ["sample"], BenchConfig(samples=2), tmp_path, progress=False, plots=False)
    with pytest.raises(InvalidArgument, match="other settings for method 'sample'"):
        run_quality(
            engine, dataset, ["sample"], BenchConfig(samples=3), tmp_path, progress=False, plots=False
        )


def test_method_registry_errors() -> None:
    dataset, cfg = ToyDataset(size=2), BenchConfig()
    with pytest.raises(InvalidArgument, match="unknown method 'best'"):
        resolve_methods(["best"], cfg, dataset)
    with pytest.raises(InvalidArgument, match="twice"):
        resolve_methods(["power", "power"], cfg, dataset)
    power = resolve_methods(["power"], BenchConfig(alpha=2, mcmc_steps=3), dataset)[0]
    assert power.options["block_size"] == dataset.max_new_tokens  # one block covers the answer
    assert (power.options["alpha"], power.options["mcmc_steps"]) == (2, 3)
    assert (
        resolve_methods(["low-temp"], BenchConfig(alpha=4), dataset)[0].options["proposal_temperature"]
        == 0.25
    )
    with pytest.raises(InvalidArgument, match="samples"):
        BenchConfig(samples=0)


def test_cli_runs_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["quality", "--dataset", "toy", "--engine", "toy", "--limit", "3", "--samples", "2"]
    assert bench_main([*args, "--out", str(out), "--no-progress", "--no-plot"]) == 0
    assert "| power |" in capsys.readouterr().out
    assert bench_main(["report", "--out", str(out), "--no-plot"]) == 0
    hard = tmp_path / "hard"
    assert (
        bench_main([*args, "--tag", "hard", "--methods", "greedy", "--out", str(hard), "--no-progress"]) == 0
    )
    capsys.readouterr()
    assert all("hard" in r["tags"] for r in load_records(hard / "results" / "greedy.jsonl"))
    for bad, needle in [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--methods", "greedy,best"], "methods: unknown method 'best'"),
        (["--model", "x"], "model: "),
        (["--alpha", "0.5"], "alpha: must be at least 1"),
        (["--tag", "medium"], "tag: no problem of toy has tag 'medium'"),
    ]:
        argv = ["quality", "--dataset", "toy", "--engine", "toy", "--out", str(out), "--no-progress", *bad]
        assert bench_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
    assert bench_main(["report", "--out", str(tmp_path / "missing")]) == 2
    assert "no run.json" in capsys.readouterr().err
