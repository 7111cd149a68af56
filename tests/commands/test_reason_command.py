"""`powersampling reason`: end to end on the toy and a tiny random model; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from powersampling import cli

JSON_FIELDS = {"text", "finish_reason", "tokens_spent", "mcmc_steps", "acceptance_rate", "latency_s", "model"}


def run_cli(
    *argv: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "powersampling", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def test_reason_on_the_toy_engine_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "reason",
        "what is 17 + 25?",
        "--engine",
        "toy",
        "--json",
        "--seed",
        "3",
        "--max-new-tokens",
        "24",
        "--block-size",
        "8",
        "--mcmc-steps",
        "3",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= JSON_FIELDS
    assert out["model"] == "toy-demo" and out["seed"] == 3 and out["mcmc_steps"] <= 9
    assert out["tokens_spent"] >= len(out["text"])
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["text"] == out["text"]


def test_several_samples_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "reason",
        "hello",
        "--engine",
        "toy",
        "--json",
        "--seed",
        "1",
        "-n",
        "3",
        "--max-new-tokens",
        "16",
        "--budget",
        "40",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["samples"]) == 3
    assert all(s["tokens_spent"] <= 40 and s["token_budget"] == 40 for s in out["samples"])


@pytest.mark.slow  # builds a tiny model once (seconds) and runs the CLI in a subprocess
def test_reason_on_a_tiny_random_model(tmp_path: Path) -> None:
    done = run_cli(
        "reason",
        "What is 17 + 25?",
        "--model",
        "tiny-random",
        "--json",
        "--seed",
        "0",
        "--max-new-tokens",
        "12",
        "--block-size",
        "4",
        "--mcmc-steps",
        "2",
        env={"POWERSAMPLING_CACHE_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) >= JSON_FIELDS and out["model"] == "tiny-random" and out["mcmc_steps"] > 0
    assert (tmp_path / "tiny-random" / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--alpha", "0.5"], "alpha: must be between 1 and 1000"),
        (["--alpha", "nan"], "alpha: must be finite"),
        (["--block-size", "0"], "block_size: must be between 1"),
        (["--max-new-tokens", "-3"], "max_new_tokens: must be between 1"),
        (["--max-new-tokens", "99999999999"], "max_new_tokens: must be between 1"),
        (["--mcmc-steps", "-1"], "mcmc_steps: must be between 0"),
        (["--budget", "10", "--max-new-tokens", "100"], "token_budget: 10 is below max_new_tokens"),
        (["--method", "beam"], "method: invalid choice"),
        (["--model", "no-such-model", "--engine", "torch"], "model: unknown model 'no-such-model'"),
        (["--engine", "tpu"], "engine: invalid choice"),
        (["--seed", "-1"], "seed: must be between 0"),
        (["--max-new-tokens", "70000"], "max_new_tokens: 70000 new tokens after a"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = [] if "--engine" in argv else ["--engine", "toy"]
    assert cli.main(["reason", "a question", *engine, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"powersampling: error: {expected}"), err
    assert "Traceback" not in err


def test_empty_and_oversized_prompts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reason", "  ", "--engine", "toy"]) == 2
    assert capsys.readouterr().err.startswith("powersampling: error: prompt: must not be empty")
    assert cli.main(["reason", "a" * 70_000, "--engine", "toy", "--max-new-tokens", "8"]) == 2
    assert capsys.readouterr().err.startswith("powersampling: error: prompt: 70000 tokens do not fit")


def test_prompt_from_stdin() -> None:
    done = run_cli(
        "reason",
        "-",
        "--engine",
        "toy",
        "--json",
        "--seed",
        "2",
        "--max-new-tokens",
        "8",
        stdin="hello there",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prompt_tokens"] == len("hello there")


# --- method smc ------------------------------------------------------------------------------------

SMC_ARGV = [
    "--engine",
    "toy",
    "--method",
    "smc",
    "--max-new-tokens",
    "16",
    "--chunk-size",
    "4",
    "--seed",
    "5",
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--particles", "0"], "particles: must be between 1 and 256"),
        (["--particles", "100000"], "particles: must be between 1 and 256"),
        (["--particles", "many"], "particles: invalid int value"),
        (["--sweeps", "0"], "sweeps: must be between 1 and 64"),
        (["--resample-threshold", "0"], "resample_threshold: must be greater than 0"),
        (["--resample-threshold", "1.5"], "resample_threshold: must be between 0 and 1"),
        (["--resample-threshold", "nan"], "resample_threshold: must be finite"),
        (["--chunk-size", "0"], "chunk_size: must be between 1"),
        (["--ramp-tokens", "-1"], "ramp_tokens: must be between 0"),
        (["--block-size", "8"], "block_size: is not used by method smc"),
        (["--mcmc-steps", "2"], "mcmc_steps: is not used by method smc"),
    ],
)
def test_bad_smc_input_is_one_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reason", "a question", *SMC_ARGV, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"powersampling: error: {expected}"), err


@pytest.mark.parametrize("flag", ["--particles", "--sweeps", "--chunk-size", "--ramp-tokens"])
def test_smc_flags_with_another_method_are_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    field = flag.removeprefix("--").replace("-", "_")
    assert cli.main(["reason", "a question", "--engine", "toy", "--method", "power", flag, "2"]) == 2
    err = capsys.readouterr().err
    assert err == f"powersampling: error: {field}: applies to method smc only\n"


def test_reason_with_method_smc_prints_its_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["reason", "what is 17 + 25?", *SMC_ARGV, "--json", "--particles", "4", "--sweeps", "2"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "smc" and out["seed"] == 5
    assert out["smc"]["particles"] == 4 and out["smc"]["sweeps"] == 2 and out["mcmc_steps"] == 1
    assert 0.0 < out["smc"]["ess_min"] <= 1.0
    assert out["tokens_spent"] >= len(out["text"])
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["text"] == out["text"]  # same seed, same answer
