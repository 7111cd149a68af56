"""Telemetry through the real gRPC server on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from powersampling.telemetry.otel import setup_telemetry

from tests.telemetry.helpers import OtlpReceiver, attributes, by_name

server_app = pytest.importorskip("powersampling.server.app")
pb = pytest.importorskip("powersampling._proto.v1.reasoning_pb2")
pb_grpc = pytest.importorskip("powersampling._proto.v1.reasoning_pb2_grpc")
config_module = pytest.importorskip("powersampling.config")

REASON_RPC = "/powersampling.v1.ReasoningService/Reason"


def reason_request(**fields: Any) -> Any:
    defaults: dict[str, Any] = {
        "text": "what is 2+2?",
        "chat": False,
        "max_new_tokens": 24,
        "block_size": 8,
        "mcmc_steps": 3,
        "seed": 5,
        "n": 2,
    }
    defaults.update(fields)
    return pb.ReasonRequest(**defaults)


async def call_reason(target: str, request: Any) -> list[Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        events = [e async for e in pb_grpc.ReasoningServiceStub(channel).Reason(request)]
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return events


@pytest.fixture
async def start() -> AsyncIterator[Any]:
    from powersampling.engines.toy import demo_engine

    running: list[Any] = []

    async def start_server(telemetry: Any = None) -> Any:
        config = config_module.ServerConfig(host="127.0.0.1", port=0, drain_timeout_s=5.0)
        server = await server_app.serve(config, engine=demo_engine(), telemetry=telemetry)
        running.append(server)
        await server.wait_ready(10)
        return server

    yield start_server
    for server in running:
        await server.stop(0)


async def test_span_tree_through_the_real_server(start: Any) -> None:
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry(span_exporter=exporter, metric_reader=reader)
    server = await start(telemetry)
    events = await call_reason(server.target, reason_request())
    final = events[-1].final
    answers = list(final.answers)
    assert len(answers) == 2

    spans = exporter.get_finished_spans()
    (rpc,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert rpc.name == REASON_RPC
    assert not [s for s in spans if "Health" in s.name]
    (reason,) = by_name(spans, "Reason")
    assert reason.kind is SpanKind.INTERNAL
    assert reason.parent is not None and reason.parent.span_id == rpc.context.span_id
    (sampling,) = by_name(spans, "sampling")
    assert sampling.parent is not None and sampling.parent.span_id == reason.context.span_id
    blocks = by_name(spans, "block")
    assert 2 <= len(blocks) <= 2 * 3  # two chains of up to three blocks
    assert {b.attributes["powersampling.chain_index"] for b in blocks} == {0, 1}
    assert all(b.parent is not None and b.parent.span_id == sampling.context.span_id for b in blocks)

    steps = sum(a.stats.mcmc_steps for a in answers)
    accepted = sum(a.stats.accepted for a in answers)
    step_events = [e for b in blocks for e in b.events if e.name == "mcmc.step"]
    assert len(step_events) == steps > 0
    a = reason.attributes
    assert a["powersampling.request_id"] == final.request_id
    assert a["powersampling.steps_taken"] == steps
    assert a["powersampling.acceptance_rate"] == pytest.approx(accepted / steps)
    assert a["powersampling.tokens_proposed"] == sum(x.stats.tokens_spent for x in answers)
    assert a["powersampling.cache.status"] == "disabled"
    assert a["gen_ai.request.seed"] == 5
    assert a["gen_ai.response.model"] == final.model
    assert "powersampling.time_to_first_event_s" in a

    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"powersampling.request.duration", "powersampling.time_to_first_event"} <= names
    assert {"powersampling.acceptance_rate", "powersampling.tokens.proposed"} <= names


async def test_server_configured_only_by_otel_environment_exports_to_an_otlp_receiver(
    start: Any, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "powersampling-e2e")
    server = await start()  # no telemetry given: the server builds it from the environment
    events = await call_reason(server.target, reason_request(n=1))
    answer = events[-1].final.answers[0]
    await server.stop(0)  # the server owns its telemetry: stopping flushes it

    names = otlp_receiver.span_names()
    assert REASON_RPC in names
    assert names.count("Reason") == 1 and names.count("sampling") == 1 and "block" in names
    assert otlp_receiver.resource_attributes()["service.name"] == "powersampling-e2e"
    spans = otlp_receiver.spans()
    (reason,) = [s for s in spans if s.name == "Reason"]
    (rpc,) = [s for s in spans if s.name == REASON_RPC]
    assert reason.parent_span_id == rpc.span_id and reason.trace_id == rpc.trace_id
    assert attributes(reason)["powersampling.steps_taken"] == answer.stats.mcmc_steps
    steps = [e for s in spans if s.name == "block" for e in s.events if e.name == "mcmc.step"]
    assert len(steps) == answer.stats.mcmc_steps
    assert {
        "powersampling.request.duration",
        "powersampling.time_to_first_event",
        "powersampling.acceptance_rate",
        "powersampling.tokens.proposed",
        "powersampling.tokens.kept",
        "gen_ai.server.request.duration",
    } <= otlp_receiver.metric_names()


async def test_client_cancel_ends_every_span(start: Any) -> None:
    import asyncio

    exporter = InMemorySpanExporter()
    server = await start(setup_telemetry(span_exporter=exporter))
    request = reason_request(max_new_tokens=3000, block_size=100, mcmc_steps=10, n=1)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = pb_grpc.ReasoningServiceStub(channel).Reason(request)
        async for _event in call:
            break  # the first message: the work has begun
        call.cancel()
    for _ in range(100):
        if by_name(exporter.get_finished_spans(), "Reason"):
            break
        await asyncio.sleep(0.05)
    spans = exporter.get_finished_spans()
    (reason,) = by_name(spans, "Reason")
    assert reason.attributes["error.type"] in ("CancelledError", "GeneratorExit")
    assert len(by_name(spans, "sampling")) == 1
    (block,) = by_name(spans, "block")  # the first block, cut short
    assert block.attributes["powersampling.interrupted"] is True
    assert block.end_time is not None and block.end_time <= reason.end_time
