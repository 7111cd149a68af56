"""Spans and metrics over HTTP: http.* server spans beside the gRPC ones, and one
powersampling.request.duration histogram whatever the transport."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.telemetry.otel import setup_telemetry

from tests.http.support import ServerThread


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def test_http_and_grpc_requests_share_spans_and_one_duration_metric(
    start_http: Callable[..., ServerThread],
) -> None:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(span_exporter=spans, metric_reader=reader)
    server = start_http(telemetry=telemetry)
    body = {"prompt": "ab", "max_tokens": 4, "seed": 1, "block_size": 4, "mcmc_steps": 1}
    assert httpx.post(f"{server.base_url}/completions", json=body).status_code == 200
    assert httpx.get(server.running.http_url + "/health").status_code == 200  # type: ignore[operator]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        list(stub.Reason(pb.ReasonRequest(text="ab", max_new_tokens=4, seed=1, block_size=4, mcmc_steps=1)))
    finished = spans.get_finished_spans()
    http_spans = [s for s in finished if s.kind.name == "SERVER" and "/v1/completions" in s.name]
    assert len(http_spans) == 1
    attributes = dict(http_spans[0].attributes or {})
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 200
    assert not [s for s in finished if "/health" in s.name]  # probes are not traced
    grpc_spans = [s for s in finished if s.name == "/powersampling.v1.ReasoningService/Reason"]
    assert len(grpc_spans) == 1
    # The request span of the HTTP call sits inside its http server span.
    server_span = http_spans[0].context.span_id
    children = [s for s in finished if s.parent is not None and s.parent.span_id == server_span]
    assert children, [s.name for s in finished]
    data = reader.get_metrics_data()
    assert data is not None
    counts = [
        point.count
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "powersampling.request.duration"
        for point in metric.data.data_points
    ]
    assert sum(counts) == 2  # one histogram, both transports
    telemetry.shutdown()
