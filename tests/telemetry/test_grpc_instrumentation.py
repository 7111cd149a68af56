"""server_interceptors(): the gRPC aio server span sits above the Reason span; health checks are quiet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from powersampling.telemetry.otel import OtelTelemetry, setup_telemetry

from tests.telemetry.helpers import by_name, drive, small_params


async def test_reason_span_is_a_child_of_the_grpc_server_span() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter)
    assert isinstance(telemetry, OtelTelemetry)
    (interceptor,) = telemetry.server_interceptors()

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        results = await drive(telemetry, small_params())
        yield results[0].text.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.v1.Reasoning",
        {"Reason": grpc.unary_stream_rpc_method_handler(stream)},  # bytes in, bytes out
    )
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_stream("/test.v1.Reasoning/Reason")
            replies = [r async for r in call(b"")]
            assert len(replies) == 1
            check = health_pb2_grpc.HealthStub(channel).Check
            await check(health_pb2.HealthCheckRequest(service=""))
    finally:
        await server.stop(None)

    spans = exporter.get_finished_spans()
    (rpc,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert rpc.name == "/test.v1.Reasoning/Reason"
    assert rpc.attributes["rpc.system"] == "grpc"
    (reason,) = by_name(spans, "Reason")
    assert reason.kind is SpanKind.INTERNAL
    assert reason.parent is not None and reason.parent.span_id == rpc.context.span_id
    assert not [s for s in spans if "Health" in s.name]
