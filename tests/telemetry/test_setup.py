"""setup_telemetry: off by default, configured by OTEL_* variables, exporting over real OTLP/gRPC."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from powersampling.server.instrumentation import grpc_interceptors
from powersampling.telemetry import otel
from powersampling.telemetry.base import NoTelemetry
from powersampling.telemetry.exporters import exporters_from_env
from powersampling.telemetry.otel import JsonLinesSpanExporter, OtelTelemetry, setup_telemetry

from tests.telemetry.helpers import OtlpReceiver, attributes, drive, small_params


def test_off_by_default() -> None:
    assert isinstance(setup_telemetry(), NoTelemetry)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SERVICE_NAME": "svc", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},  # nothing to export to
    ],
)
def test_disabled_configurations_give_no_telemetry(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert isinstance(setup_telemetry(), NoTelemetry)


def test_sdk_disabled_wins_over_explicit_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    assert isinstance(setup_telemetry(span_exporter=exporter), NoTelemetry)


async def test_no_telemetry_builds_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = setup_telemetry()
    assert isinstance(telemetry, NoTelemetry)
    assert grpc_interceptors(telemetry) == ()
    results = await drive(telemetry, small_params())
    assert results and results[0].mcmc_steps > 0


def test_exporter_selection(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert [type(e) for e in exporters_from_env("traces")] == [GrpcSpanExporter]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert [type(e) for e in exporters_from_env("traces")] == [HttpSpanExporter]
    assert [type(e) for e in exporters_from_env("metrics")] == [HttpMetricExporter]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # per-signal override
    assert [type(e) for e in exporters_from_env("traces")] == [GrpcSpanExporter]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp_proto_http")
    monkeypatch.setenv(otel.TRACES_FILE_ENV, str(tmp_path) + "/sub/spans.jsonl")
    exporters = exporters_from_env("traces")
    assert [type(e) for e in exporters] == [ConsoleSpanExporter, HttpSpanExporter, JsonLinesSpanExporter]
    exporters[-1].shutdown()
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert exporters_from_env("metrics") == []


def test_traces_file_alone_enables_tracing(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv(otel.TRACES_FILE_ENV, f"{tmp_path}/spans.jsonl")
    telemetry = setup_telemetry()
    assert isinstance(telemetry, OtelTelemetry)
    assert telemetry.tracer_provider is not None and telemetry.meter_provider is None
    telemetry.shutdown()


async def test_otlp_export_configured_only_by_environment(
    monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "powersampling-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team=reasoning")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # exported at shutdown
    telemetry = setup_telemetry()
    assert isinstance(telemetry, OtelTelemetry)
    results = await drive(telemetry, small_params())
    telemetry.set_queue_depth(2)
    telemetry.record_rejection("queue_full")
    telemetry.shutdown()  # flushes both signals to the receiver

    names = otlp_receiver.span_names()
    assert names.count("Reason") == 1 and names.count("sampling") == 1
    assert names.count("block") == 4
    resource = otlp_receiver.resource_attributes()
    assert resource["service.name"] == "powersampling-test"
    assert resource["deployment.environment.name"] == "ci" and resource["team"] == "reasoning"
    (reason,) = [s for s in otlp_receiver.spans() if s.name == "Reason"]
    a = attributes(reason)
    assert a["powersampling.steps_taken"] == results[0].mcmc_steps
    assert a["powersampling.acceptance_rate"] == pytest.approx(results[0].acceptance_rate)
    steps = [e for s in otlp_receiver.spans() if s.name == "block" for e in s.events if e.name == "mcmc.step"]
    assert len(steps) == results[0].mcmc_steps

    assert {
        "powersampling.request.duration",
        "powersampling.time_to_first_event",
        "powersampling.acceptance_rate",
        "powersampling.tokens.proposed",
        "powersampling.tokens.kept",
        "powersampling.cache.misses",
        "powersampling.queue.depth",
        "powersampling.rejections",
        "gen_ai.server.request.duration",
    } <= otlp_receiver.metric_names()


async def test_step_events_can_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(otel.STEP_EVENTS_ENV, "false")
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter)
    results = await drive(telemetry, small_params())
    blocks = [s for s in exporter.get_finished_spans() if s.name == "block"]
    assert blocks and not [e for b in blocks for e in b.events]
    assert sum(b.attributes["powersampling.steps_taken"] for b in blocks) == results[0].mcmc_steps


async def test_sampled_out_traces_build_nothing_but_metrics_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry(span_exporter=exporter, metric_reader=reader)
    await drive(telemetry, small_params())
    assert exporter.get_finished_spans() == ()
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "powersampling.acceptance_rate" in names
