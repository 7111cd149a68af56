"""`powersampling report SPANS.jsonl`: latency versus acceptance rate from exported spans.

Reads the request spans (``Reason``) of

* the JSON-lines file that ``POWERSAMPLING_TRACES_FILE`` writes (one ``ReadableSpan.to_json`` object a
  line), and
* the OpenTelemetry Collector's file exporter in JSON (one OTLP ``TracesData`` object a line,
  ``{"resourceSpans": [...]}``),

draws a scatter plot (x: acceptance rate, y: request latency, colour: method, size: proposal tokens)
and prints a summary: per method, and latency per acceptance-rate bucket.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from powersampling.errors import InvalidArgument

REQUEST_SPAN = "Reason"  # the name otel.py gives the request span
ACCEPTANCE_BUCKETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One Reason request, as its span recorded it."""

    trace_id: str
    method: str
    latency_s: float
    acceptance_rate: float
    steps: int
    tokens_proposed: int
    cache_status: str
    error: bool


# ------------------------------------------------------------------------------------------ reading


def read_requests(paths: Iterable[str | Path]) -> list[RequestRecord]:
    """The request spans in these files (JSON lines in either format; blank or foreign lines skipped)."""
    records = []
    for path in paths:
        for span in _spans_in_file(Path(path)):
            record = _record(span)
            if record is not None:
                records.append(record)
    return records


@dataclass(frozen=True, slots=True)
class _Span:
    name: str
    trace_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool


def _spans_in_file(path: Path) -> Iterator[_Span]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield from _spans_in_doc(doc)


def _spans_in_doc(doc: Any) -> Iterator[_Span]:
    if isinstance(doc, list):
        for item in doc:
            yield from _spans_in_doc(item)
    elif isinstance(doc, dict):
        if "resourceSpans" in doc or "resource_spans" in doc:
            yield from _otlp_spans(doc)
        elif "context" in doc and "start_time" in doc:
            span = _sdk_span(doc)
            if span is not None:
                yield span


def _sdk_span(doc: dict[str, Any]) -> _Span | None:
    """A span in the SDK's `ReadableSpan.to_json` format."""
    start, end = doc.get("start_time"), doc.get("end_time")
    if not start or not end:
        return None
    status = doc.get("status") or {}
    return _Span(
        name=str(doc.get("name", "")),
        trace_id=str((doc.get("context") or {}).get("trace_id", "")),
        start_ns=_iso_to_ns(start),
        end_ns=_iso_to_ns(end),
        attributes=dict(doc.get("attributes") or {}),
        error=status.get("status_code") == "ERROR",
    )


def _iso_to_ns(text: str) -> int:
    # The SDK writes e.g. "2025-01-01T12:00:00.123456Z" (microseconds, UTC).
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def _otlp_spans(doc: dict[str, Any]) -> Iterator[_Span]:
    """Spans of an OTLP/JSON TracesData (camelCase as the Collector writes it; snake_case accepted)."""
    for rs in _get(doc, "resourceSpans", "resource_spans"):
        for ss in _get(rs, "scopeSpans", "scope_spans"):
            for s in _get(ss, "spans"):
                status = s.get("status") or {}
                code = status.get("code")
                yield _Span(
                    name=str(s.get("name", "")),
                    trace_id=str(_first(s, "traceId", "trace_id", default="")),
                    start_ns=int(_first(s, "startTimeUnixNano", "start_time_unix_nano", default=0)),
                    end_ns=int(_first(s, "endTimeUnixNano", "end_time_unix_nano", default=0)),
                    attributes={a["key"]: _otlp_value(a.get("value") or {}) for a in s.get("attributes", [])},
                    error=code in (2, "STATUS_CODE_ERROR"),
                )


def _get(d: dict[str, Any], *keys: str) -> list[Any]:
    value = _first(d, *keys, default=None)
    return value if isinstance(value, list) else []


def _first(d: dict[str, Any], *keys: str, default: Any) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    return default


def _otlp_value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])  # int64 is a JSON string in OTLP/JSON
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_otlp_value(x) for x in (v["arrayValue"] or {}).get("values", [])]
    return None


def _record(span: _Span) -> RequestRecord | None:
    a = span.attributes
    if span.name != REQUEST_SPAN or "powersampling.method" not in a or span.end_ns <= 0:
        return None
    return RequestRecord(
        trace_id=span.trace_id,
        method=str(a["powersampling.method"]),
        latency_s=max(0, span.end_ns - span.start_ns) / 1e9,
        acceptance_rate=float(a.get("powersampling.acceptance_rate", 0.0)),
        steps=int(a.get("powersampling.steps_taken", 0)),
        tokens_proposed=int(a.get("powersampling.tokens_proposed", 0)),
        cache_status=str(a.get("powersampling.cache.status", "")),
        error=span.error,
    )


# ---------------------------------------------------------------------------------------- summaries


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _fmt(value: float, width: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.3f}"


def bucket_label(rate: float) -> str:
    for low, high in itertools.pairwise(ACCEPTANCE_BUCKETS):
        if rate < high or high == ACCEPTANCE_BUCKETS[-1]:
            close = "]" if high == ACCEPTANCE_BUCKETS[-1] else ")"
            return f"[{low:.1f}, {high:.1f}{close}"
    return "?"


def summary_text(records: Sequence[RequestRecord], *, left_out: int = 0) -> str:
    """The per-method table and the latency-by-acceptance table, as plain text."""
    lines = []
    by_method: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    header = (
        f"{'method':<10} {'count':>6} {'errors':>6} {'p50 s':>9} {'p99 s':>9} {'accept':>7} {'tokens':>9}"
    )
    lines += ["Requests by method", header, "-" * len(header)]
    for method in sorted(by_method):
        rs = by_method[method]
        lat = [r.latency_s for r in rs]
        lines.append(
            f"{method:<10} {len(rs):>6} {sum(r.error for r in rs):>6} {percentile(lat, 50):>9.3f} "
            f"{percentile(lat, 99):>9.3f} {_fmt(_mean([r.acceptance_rate for r in rs if r.steps]), 7)} "
            f"{_mean([r.tokens_proposed for r in rs]):>9.1f}"
        )
    lines.append("")
    by_bucket: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_bucket[bucket_label(r.acceptance_rate) if r.steps else "no MCMC steps"].append(r)
    header = f"{'acceptance':<14} {'count':>6} {'p50 s':>9} {'p99 s':>9} {'mean s':>9} {'tokens':>9}"
    lines += ["Latency by acceptance rate", header, "-" * len(header)]
    order = [bucket_label(low) for low in ACCEPTANCE_BUCKETS[:-1]] + ["no MCMC steps"]
    for label in order:
        rs = by_bucket.get(label, [])
        if not rs:
            continue
        lat = [r.latency_s for r in rs]
        lines.append(
            f"{label:<14} {len(rs):>6} {percentile(lat, 50):>9.3f} {percentile(lat, 99):>9.3f} "
            f"{_mean(lat):>9.3f} {_mean([r.tokens_proposed for r in rs]):>9.1f}"
        )
    if left_out:
        lines += ["", f"({left_out} cache hit(s) left out: no sampling ran for them)"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- plot


def plot(records: Sequence[RequestRecord], out: str | Path) -> Path:
    """Scatter of latency against acceptance rate, coloured by method, sized by proposal tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        top_tokens = max((r.tokens_proposed for r in records), default=1) or 1
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, method in enumerate(sorted({r.method for r in records})):
            rs = [r for r in records if r.method == method]
            ax.scatter(
                [r.acceptance_rate for r in rs],
                [r.latency_s for r in rs],
                s=[12 + 200 * math.sqrt(r.tokens_proposed / top_tokens) for r in rs],
                color=colours[i % len(colours)],
                alpha=0.6,
                edgecolors="red",
                linewidths=[1.5 if r.error else 0.0 for r in rs],
                label=f"{method} ({len(rs)})",
            )
        latencies = [r.latency_s for r in records if r.latency_s > 0]
        if latencies and max(latencies) / min(latencies) > 50:
            ax.set_yscale("log")
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("acceptance rate (accepted / proposed MCMC steps)")
        ax.set_ylabel("request latency (s)")
        ax.set_title("powersampling: latency vs acceptance rate (marker size: proposal tokens)")
        ax.grid(True, alpha=0.3)
        if records:
            ax.legend(title="method", loc="best")
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


# -------------------------------------------------------------------------------------------- CLI


def add_report_command(subparsers: Any) -> None:
    """Register `powersampling report` on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="plot latency vs acceptance rate from exported spans",
        description=(
            "Read Reason request spans (the POWERSAMPLING_TRACES_FILE JSON lines, or the Collector's "
            "OTLP/JSON file export), write a scatter plot of latency against acceptance rate and print "
            "a summary per method and per acceptance-rate bucket."
        ),
    )
    p.add_argument("spans", nargs="+", help="span files (JSON lines)")
    p.add_argument("--out", default="latency_vs_acceptance.png", help="PNG to write")
    p.add_argument("--include-cache-hits", action="store_true", help="keep requests answered from the cache")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """Read, plot, print; 1 when the files hold no request spans."""
    out = stdout or sys.stdout
    missing = [p for p in args.spans if not Path(p).is_file()]
    if missing:
        raise InvalidArgument("spans", f"no such file: {missing[0]}")
    records = read_requests(args.spans)
    left_out = 0
    if not args.include_cache_hits:
        kept = [r for r in records if r.cache_status != "hit"]
        left_out = len(records) - len(kept)
        records = kept
    if not records:
        print(f"report: no {REQUEST_SPAN} request spans found in {', '.join(args.spans)}", file=sys.stderr)
        return 1
    path = plot(records, args.out)
    print(summary_text(records, left_out=left_out), file=out)
    print(f"\nwrote {path}", file=out)
    return 0


__all__ = ["RequestRecord", "add_report_command", "plot", "read_requests", "run_report", "summary_text"]
