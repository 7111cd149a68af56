"""benchmarks/smc_vs_mh.py runs end to end on the toy engine (a smoke run of the figures' script)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "smc_vs_mh.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smc_vs_mh", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_compares_every_method_on_the_same_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    argv = ["--engines", "toy", "--sets", "toy:4", "--seeds", "0,1", "--particles", "2,4", "--quiet"]
    assert asyncio.run(script.main([*argv, "--out", str(tmp_path)])) == 0
    table = capsys.readouterr().out
    for method in ("sample", "mh", "smc-2", "smc-4"):
        assert f"| toy | toy | {method} | 8 |" in table
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 2 * 4  # methods x seeds x problems
    smc = [r for r in rows if r["method"].startswith("smc")]
    assert all(r["smc"] is not None and r["smc"]["particles"] in (2, 4) for r in smc)
    assert all(r["tokens_spent"] >= r["answer_tokens"] for r in rows)
    lines = {x["method"]: x for x in json.loads((tmp_path / "summary.json").read_text())["lines"]}
    assert lines["sample"]["x_plain"] == pytest.approx(1.0)
    assert lines["mh"]["tokens_mean"] > lines["sample"]["tokens_mean"]  # MH spends on its proposals
    # A rerun resumes (nothing left to do); other settings into the same folder are refused.
    assert asyncio.run(script.main([*argv, "--out", str(tmp_path)])) == 0
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == len(rows)
    assert asyncio.run(script.main([*argv, "--out", str(tmp_path), "--alpha", "2"])) == 2
    # A run cut short mid-problem: the summary counts only problems every method answered.
    with (tmp_path / "rows.jsonl").open("a") as sink:
        sink.write(json.dumps({**rows[0], "problem": "toy-extra"}) + "\n")
    capsys.readouterr()
    assert asyncio.run(script.main(["--report", "--out", str(tmp_path)])) == 0
    assert "| toy | toy | sample | 8 |" in capsys.readouterr().out  # not 9: toy-extra is left out


def test_vllm_is_skipped_when_absent(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert script.open_engine("vllm", script.build_parser().parse_args([])) is None
    assert "vllm: not installed" in capsys.readouterr().err
