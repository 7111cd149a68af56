"""Shared pieces of the telemetry tests: a request driven exactly as the server drives it, and a real
OTLP receiver (the Collector's gRPC TraceService and MetricsService) on a loopback port."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from powersampling.api import ReasonResult, make_params, reason_async
from powersampling.engines.base import Engine
from powersampling.engines.toy import demo_engine
from powersampling.params import SamplingParams
from powersampling.results import CacheStatus
from powersampling.telemetry.base import Telemetry

PROMPT = "what is 2+2?"


def small_params(**options: Any) -> SamplingParams:
    """A quick power-sampling request on the demo toy engine: 4 blocks of 8 tokens, 4 steps each."""
    defaults: dict[str, Any] = {"max_new_tokens": 32, "block_size": 8, "mcmc_steps": 4, "seed": 11}
    defaults.update(options)
    return make_params(**defaults)


async def drive(
    telemetry: Telemetry,
    params: SamplingParams,
    *,
    engine: Engine | None = None,
    prompt: str | list[int] = PROMPT,
    cache_status: CacheStatus = CacheStatus.MISS,
    request_id: str = "req-1",
    tenant: str = "tenant-a",
) -> list[ReasonResult]:
    """One request, observed the way the server observes it (events forwarded, first event marked)."""
    own_engine = engine is None
    engine = engine or demo_engine()
    prompt_ids = engine.encode_prompt(prompt, chat=False)
    observer = telemetry.request(
        request_id=request_id,
        params=params,
        model=engine.info.model,
        engine=engine.info.engine,
        prompt_tokens=len(prompt_ids),
        tenant=tenant,
    )
    observer.on_cache_status(cache_status, 0)
    sent_first = False

    def on_event(event: Any) -> None:
        nonlocal sent_first
        observer.on_event(event)
        if not sent_first:
            sent_first = True
            observer.on_first_event_sent()

    try:
        results = await reason_async(prompt_ids, engine, params, on_event=on_event)
    except BaseException as error:
        observer.finish(None, error)
        raise
    finally:
        if own_engine:
            await engine.close()
    observer.finish(results)
    return results


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


@dataclass
class OtlpReceiver:
    """A real OTLP/gRPC endpoint: records every ExportTraceServiceRequest and ExportMetricsServiceRequest."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    port: int = 0
    _server: grpc.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> OtlpReceiver:
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with receiver._lock:
                    receiver.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with receiver._lock:
                    receiver.metrics.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        # A thread-pool server: the SDK exports from its own threads, and a test may block the event
        # loop in force_flush while the export is under way.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def span_names(self) -> list[str]:
        with self._lock:
            return [
                span.name
                for request in self.traces
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def spans(self) -> list[Any]:
        with self._lock:
            return [
                span
                for request in self.traces
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def resource_attributes(self) -> dict[str, Any]:
        with self._lock:
            for request in self.traces:
                for rs in request.resource_spans:
                    return {a.key: _any_value(a.value) for a in rs.resource.attributes}
        return {}

    def metric_names(self) -> set[str]:
        with self._lock:
            return {
                m.name
                for request in self.metrics
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(span: Any) -> dict[str, Any]:
    """Attributes of an OTLP protobuf span as a dict."""
    return {a.key: _any_value(a.value) for a in span.attributes}
