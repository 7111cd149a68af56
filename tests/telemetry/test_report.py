"""`powersampling report`: a PNG and a summary from the spans of real runs."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from powersampling.errors import InvalidArgument
from powersampling.telemetry import otel
from powersampling.telemetry.otel import setup_telemetry
from powersampling.telemetry.report import (
    add_report_command,
    percentile,
    read_requests,
    run_report,
    summary_text,
)

from tests.telemetry.helpers import OtlpReceiver, drive, small_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

WORKLOAD = [
    {"method": "power", "alpha": 4.0, "seed": 1},
    {"method": "power", "alpha": 2.0, "seed": 2},
    {"method": "power", "alpha": 8.0, "seed": 3, "mcmc_steps": 8},
    {"method": "sample", "seed": 4},
    {"method": "greedy", "seed": 5},
    {"method": "low-temp", "seed": 6},
]


async def run_workload(telemetry: otel.Telemetry) -> None:
    for i, options in enumerate(WORKLOAD):
        await drive(telemetry, small_params(**options), request_id=f"req-{i}")


def report_args(*spans: Path, out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers())
    return parser.parse_args(["report", *map(str, spans), "--out", str(out)])


async def test_report_draws_a_png_from_a_real_runs_spans(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv(otel.TRACES_FILE_ENV, str(spans))
    telemetry = setup_telemetry()
    await run_workload(telemetry)
    telemetry.shutdown()
    assert spans.stat().st_size > 0

    records = read_requests([spans])
    assert len(records) == len(WORKLOAD)
    assert {r.method for r in records} == {"power", "sample", "greedy", "low-temp"}
    assert all(r.latency_s > 0 for r in records)
    assert all(0 < r.acceptance_rate <= 1 for r in records if r.method == "power")

    out = tmp_path / "plots" / "latency_vs_acceptance.png"
    stdout = io.StringIO()
    assert run_report(report_args(spans, out=out), stdout=stdout) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    text = stdout.getvalue()
    for method in ("power", "sample", "greedy", "low-temp"):
        assert f"\n{method} " in text
    assert "Latency by acceptance rate" in text and "no MCMC steps" in text


async def test_powersampling_report_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = pytest.importorskip("powersampling.cli")
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv(otel.TRACES_FILE_ENV, str(spans))
    telemetry = setup_telemetry()
    await run_workload(telemetry)
    telemetry.shutdown()
    out = tmp_path / "latency_vs_acceptance.png"
    assert cli.main(["report", str(spans), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert all(f"\n{m} " in printed for m in ("power", "sample", "greedy", "low-temp"))
    assert cli.main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "spans: no such file" in capsys.readouterr().err


async def test_report_reads_the_collectors_otlp_json(
    monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    telemetry = setup_telemetry()
    await run_workload(telemetry)
    telemetry.shutdown()
    # What the Collector's file exporter writes with format json: one TracesData object a line.
    path = tmp_path / "collector.json"
    with path.open("w") as f:
        for request in otlp_receiver.traces:
            f.write(json.dumps(MessageToDict(request)) + "\n")
    records = read_requests([path])
    assert sorted(r.method for r in records) == sorted(str(w["method"]) for w in WORKLOAD)
    out = tmp_path / "otlp.png"
    assert run_report(report_args(path, out=out), stdout=io.StringIO()) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_report_without_request_spans_fails_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"not": "a span"}\n\nnot json\n')
    assert run_report(report_args(empty, out=tmp_path / "x.png"), stdout=io.StringIO()) == 1
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(InvalidArgument, match="no such file"):
        run_report(report_args(tmp_path / "missing.jsonl", out=tmp_path / "x.png"))


def test_percentile_and_summary_of_no_rows() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert "Requests by method" in summary_text([])
