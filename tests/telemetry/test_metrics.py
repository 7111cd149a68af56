"""Metric values recorded per request (InMemoryMetricReader)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from powersampling.results import CacheStatus
from powersampling.telemetry.otel import OtelTelemetry, setup_telemetry

from tests.telemetry.helpers import drive, small_params


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> (unit, list of (attributes, point))."""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = (m.unit, [(dict(p.attributes), p) for p in m.data.data_points])
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


async def test_request_metrics_have_the_right_values(reader: InMemoryMetricReader) -> None:
    telemetry = setup_telemetry(metric_reader=reader)
    assert isinstance(telemetry, OtelTelemetry)
    assert telemetry.tracer_provider is None  # metrics only: no spans are built
    first = await drive(telemetry, small_params(n=2, token_budget=300))
    second = await drive(telemetry, small_params(seed=12), cache_status=CacheStatus.RESUMED)
    results = first + second
    m = collect(reader)

    unit, points = m["powersampling.request.duration"]
    assert unit == "s"
    assert sum(p.count for _, p in points) == 2
    assert {a["powersampling.cache.status"] for a, _ in points} == {"miss", "resumed"}
    assert all(
        a["powersampling.method"] == "power" and a["gen_ai.request.model"] == "toy-demo" for a, _ in points
    )

    unit, points = m["powersampling.time_to_first_event"]
    assert unit == "s" and sum(p.count for _, p in points) == 2

    unit, points = m["powersampling.tokens.proposed"]
    assert unit == "{token}"
    assert sum(p.value for _, p in points) == sum(r.tokens_spent for r in results)
    _, points = m["powersampling.tokens.kept"]
    assert sum(p.value for _, p in points) == sum(len(r.token_ids) for r in results)

    unit, ((_, hist),) = m["powersampling.acceptance_rate"]
    assert unit == "1" and hist.count == 2
    rate_first = sum(r.accepted_steps for r in first) / sum(r.mcmc_steps for r in first)
    rate_second = second[0].accepted_steps / second[0].mcmc_steps
    assert hist.sum == pytest.approx(rate_first + rate_second)
    assert list(hist.explicit_bounds)[:3] == [0.0, 0.05, 0.1]

    _, ((_, budget),) = m["powersampling.budget.utilisation"]
    assert budget.count == 1  # only the request with a budget
    assert budget.sum == pytest.approx(sum(r.tokens_spent for r in first) / (2 * 300))

    _, points = m["powersampling.cache.misses"]
    assert sum(p.value for _, p in points) == 1
    _, points = m["powersampling.cache.hits"]
    assert [(a["powersampling.cache.status"], p.value) for a, p in points] == [("resumed", 1)]

    unit, points = m["gen_ai.server.request.duration"]
    assert unit == "s" and sum(p.count for _, p in points) == 2
    assert all(a["gen_ai.operation.name"] == "text_completion" for a, _ in points)


async def test_cache_hit_counts_a_hit_and_no_tokens(reader: InMemoryMetricReader) -> None:
    telemetry = setup_telemetry(metric_reader=reader)
    params = small_params()
    results = await drive(telemetry, params, cache_status=CacheStatus.DISABLED)
    before = collect(reader)
    proposed_before = sum(p.value for _, p in before["powersampling.tokens.proposed"][1])
    observer = telemetry.request(
        request_id="hit", params=params, model="toy-demo", engine="toy", prompt_tokens=3, tenant=""
    )
    observer.on_cache_status(CacheStatus.HIT, 0)
    observer.finish(results)
    m = collect(reader)
    assert sum(p.value for _, p in m["powersampling.tokens.proposed"][1]) == proposed_before
    assert [p.value for _, p in m["powersampling.cache.hits"][1]] == [1]
    assert "powersampling.cache.misses" not in m  # "disabled" is not a look-up
    assert sum(p.count for _, p in m["powersampling.acceptance_rate"][1]) == 1


def test_queue_depth_and_rejections(reader: InMemoryMetricReader) -> None:
    telemetry = setup_telemetry(metric_reader=reader)
    telemetry.set_queue_depth(3)
    telemetry.set_queue_depth(5)
    telemetry.record_rejection("queue_full")
    telemetry.record_rejection("queue_full")
    telemetry.record_rejection("too_many_tokens")
    m = collect(reader)
    unit, ((_, depth),) = m["powersampling.queue.depth"]
    assert unit == "{request}" and depth.value == 5
    rejections = {a["reason"]: p.value for a, p in m["powersampling.rejections"][1]}
    assert rejections == {"queue_full": 2, "too_many_tokens": 1}


async def test_errors_are_labelled(reader: InMemoryMetricReader) -> None:
    telemetry = setup_telemetry(metric_reader=reader)
    observer = telemetry.request(
        request_id="x", params=small_params(), model="toy-demo", engine="toy", prompt_tokens=3, tenant=""
    )
    observer.on_cache_status(CacheStatus.MISS, 0)
    observer.finish(None, TimeoutError("deadline"))
    m = collect(reader)
    ((attrs, _),) = m["powersampling.request.duration"][1]
    assert attrs["error.type"] == "TimeoutError"
    ((attrs, _),) = m["gen_ai.server.request.duration"][1]
    assert attrs["error.type"] == "TimeoutError"
    assert "powersampling.acceptance_rate" not in m


async def test_exemplars_point_at_the_request_trace(reader: InMemoryMetricReader) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter, metric_reader=reader)
    await drive(telemetry, small_params())
    (reason,) = [s for s in exporter.get_finished_spans() if s.name == "Reason"]
    ((_, point),) = collect(reader)["powersampling.request.duration"][1]
    assert [e.trace_id for e in point.exemplars] == [reason.context.trace_id]
