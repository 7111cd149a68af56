"""The quality benchmark runs method smc: registry, flags, records."""

from __future__ import annotations

from pathlib import Path

import pytest
from powersampling import cli
from powersampling.bench.cli import main as bench_main
from powersampling.bench.datasets import ToyDataset, make_toy_engine, toy_power_accuracy
from powersampling.bench.runner import BenchConfig, load_records, resolve_methods, run_quality
from powersampling.errors import InvalidArgument


def test_the_smc_spec_takes_the_runs_smc_settings() -> None:
    dataset = ToyDataset(size=2)
    (smc,) = resolve_methods(["smc"], BenchConfig(alpha=2, particles=8, sweeps=2, chunk_size=4), dataset)
    assert smc.options["method"] == "smc" and smc.options["alpha"] == 2
    assert (smc.options["particles"], smc.options["sweeps"], smc.options["chunk_size"]) == (8, 2, 4)
    assert "block_size" not in smc.options and "mcmc_steps" not in smc.options  # smc refuses them
    assert "resample_threshold" not in smc.options  # unset: the method's default
    assert "8 particles x 2 sweep(s)" in smc.description
    (default,) = resolve_methods(["smc"], BenchConfig(), dataset)
    assert "16 particles x 1 sweep(s)" in default.description
    with pytest.raises(InvalidArgument, match=r"^resample_threshold"):
        resolve_methods(["smc"], BenchConfig(resample_threshold=1.5), dataset)


def test_smc_answers_the_toy_set_like_p_to_the_alpha(tmp_path: Path) -> None:
    # The toy's p^4 answers right with probability 0.993 and T = 1 with 0.4; 30 problems x 4 samples
    # from 16 particles: the accuracy is far above T = 1 and its interval covers p^4's.
    summary = run_quality(
        make_toy_engine(),
        ToyDataset(size=30),
        ["smc"],
        BenchConfig(samples=4, particles=16),
        tmp_path,
        progress=False,
        plots=False,
    )
    accuracy = summary["methods"]["smc"]["subsets"]["all"]["accuracy"]
    assert accuracy["value"] > 0.85 and accuracy["low"] <= toy_power_accuracy(4) <= accuracy["high"]
    smc = summary["methods"]["smc"]["smc"]
    assert smc["particles"] == 16 and 0.0 < smc["ess_min_mean"] <= 1.0 and smc["sweeps_per_answer"] == 1
    records = load_records(tmp_path / "results" / "smc.jsonl")
    assert len(records) == 30
    for sample in (s for r in records for s in r["samples"]):
        assert sample["smc"]["particles"] == 16 and 0.0 < sample["smc"]["ess_min"] <= 1.0
        assert sample["tokens_spent"] >= sample["generated_tokens"]


def test_cli_smc_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "quality",
        "--dataset",
        "toy",
        "--engine",
        "toy",
        "--limit",
        "3",
        "--samples",
        "2",
        "--no-progress",
    ]
    out = tmp_path / "cli"
    argv = [
        *base,
        "--methods",
        "sample,smc",
        "--particles",
        "4",
        "--sweeps",
        "2",
        "--out",
        str(out),
        "--no-plot",
    ]
    assert bench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| smc |" in printed and "| SMC | particles |" in printed
    assert all(
        s["smc"]["sweeps"] == 2 for r in load_records(out / "results" / "smc.jsonl") for s in r["samples"]
    )
    for bad, needle in [
        (["--particles", "0"], "particles: must be at least 1"),
        (["--resample-threshold", "1.5"], "resample_threshold: must be between 0 and 1"),
        (["--chunk-size", "0"], "chunk_size: must be at least 1"),
        (["--ramp-tokens", "-2"], "ramp_tokens: must be non-negative"),
    ]:
        argv = ["bench", *base, "--methods", "smc", "--out", str(tmp_path / "bad"), *bad]
        assert cli.main(argv) == 2  # the powersampling command: argparse's refusals are one line too
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
