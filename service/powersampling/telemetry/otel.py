"""OpenTelemetry traces and metrics for Reason requests.

`setup_telemetry()` reads the standard ``OTEL_*`` variables and returns a `Telemetry`; when nothing is
configured it returns `NoTelemetry`, so a server without telemetry builds no spans at all.

Enabling (see docs/telemetry.md):

* ``OTEL_SDK_DISABLED=true`` switches everything off, whatever else is set.
* ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated ``otlp``, ``console``, ``none``
  (``otlp_proto_grpc`` and ``otlp_proto_http`` are accepted too). Unlike the SDK's own default, an unset
  variable means ``otlp`` only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the
  per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``), and ``none`` otherwise: telemetry is off
  unless asked for.
* ``OTEL_EXPORTER_OTLP_{TRACES_,METRICS_,}PROTOCOL``: ``grpc`` (default) or ``http/protobuf``. Endpoint,
  headers, timeouts, compression, certificates, batch sizes, export interval, span limits and the
  sampler are read by the SDK's own exporters and processors from their usual variables.
* ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override the resource (service.name defaults to
  ``powersampling``).
* ``POWERSAMPLING_TRACES_FILE=/path/spans.jsonl`` also writes every finished span as one JSON line (the
  SDK's ``ReadableSpan.to_json`` format) for ``powersampling report``.
* ``POWERSAMPLING_TRACES_MCMC_STEPS=false`` leaves out the per-step span events (block spans still
  carry the step counts); ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG``
  keeps a fraction of the traces. Metrics are never sampled.

Spans (one trace per request)::

    /powersampling.v1.Reasoning/Reason      gRPC server span (opentelemetry-instrumentation-grpc)
    └── Reason                              INTERNAL (SERVER when there is no gRPC parent)
        └── sampling                        the sampler run (absent on a cache hit)
            ├── block                       one per (chain, block); MCMC steps are its events:
            │                               "mcmc.step" and "mcmc.step_skipped"
            └── sweep                       Power-SMC: one per (chain, sweep); events "smc.ess" after
                                            every chunk and "smc.resample" when the particles were
                                            resampled; attributes powersampling.ess_min, .resamples,
                                            .unique_ancestors, .log_z_hat and .pimh.accepted

Metrics (meter ``powersampling``) and the names the OpenTelemetry Collector's Prometheus exporter gives
them with its default settings (``.`` becomes ``_``; unit ``s`` appends ``_seconds``; units in braces such
as ``{token}`` add nothing; monotonic counters get ``_total``; unit ``1`` appends ``_ratio`` to gauges
only, so our ratio histograms keep their bare name; histograms expose ``_bucket``, ``_sum``, ``_count``):

==================================  =========  =========  ==========================================
instrument                          kind       unit       Prometheus
==================================  =========  =========  ==========================================
powersampling.request.duration      histogram  s          powersampling_request_duration_seconds
powersampling.time_to_first_event   histogram  s          powersampling_time_to_first_event_seconds
powersampling.acceptance_rate       histogram  1          powersampling_acceptance_rate
powersampling.budget.utilisation    histogram  1          powersampling_budget_utilisation
powersampling.tokens.proposed       counter    {token}    powersampling_tokens_proposed_total
powersampling.tokens.kept           counter    {token}    powersampling_tokens_kept_total
powersampling.cache.hits            counter    {request}  powersampling_cache_hits_total
powersampling.cache.misses          counter    {request}  powersampling_cache_misses_total
powersampling.queue.depth           gauge      {request}  powersampling_queue_depth
powersampling.rejections            counter    {request}  powersampling_rejections_total
gen_ai.server.request.duration      histogram  s          gen_ai_server_request_duration_seconds
==================================  =========  =========  ==========================================

With the Collector's UTF-8 translation strategies (``NoUTF8Escaping*``) the dots stay; with
``add_metric_suffixes: false`` the unit and ``_total`` suffixes are not added.

The work is split by job: `powersampling.telemetry.exporters` (exporters from the environment),
`powersampling.telemetry.instruments` (the metric instruments) and `powersampling.telemetry.observer`
(one request's spans and metrics); this module ties them into the `Telemetry` the server uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from powersampling import __version__
from powersampling.params import SamplingParams
from powersampling.telemetry.base import NoTelemetry, RequestObserver, Telemetry
from powersampling.telemetry.exporters import (
    TRACES_FILE_ENV,
    JsonLinesSpanExporter,
    env,
    env_flag,
    exporters_from_env,
)
from powersampling.telemetry.instruments import INSTRUMENTATION_NAME, Instruments
from powersampling.telemetry.observer import OtelRequestObserver

STEP_EVENTS_ENV = "POWERSAMPLING_TRACES_MCMC_STEPS"  # "false": no per-step span events


# --------------------------------------------------------------------------------------------- set-up


def setup_telemetry(
    *,
    service_name: str = "powersampling",
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Telemetry configured from the ``OTEL_*`` environment (see the module docstring).

    `span_exporter` and `metric_reader` (tests: InMemorySpanExporter, InMemoryMetricReader) replace what
    the environment configures for that signal; an explicit span exporter is called synchronously as
    each span ends. Returns `NoTelemetry` when the SDK is disabled or nothing would be exported.
    """
    if env_flag("OTEL_SDK_DISABLED"):
        return NoTelemetry()

    processors: list[Any] = []
    if span_exporter is not None:
        processors.append(SimpleSpanProcessor(span_exporter))
    else:
        processors.extend(BatchSpanProcessor(e) for e in exporters_from_env("traces"))

    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    else:
        readers.extend(PeriodicExportingMetricReader(e) for e in exporters_from_env("metrics"))

    if not processors and not readers:
        return NoTelemetry()

    resource = Resource.create({"service.name": service_name, "service.version": __version__}).merge(
        OTELResourceDetector().detect()
    )
    tracer_provider: TracerProvider | None = None
    if processors:
        tracer_provider = TracerProvider(resource=resource)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers) if readers else None
    step_events = env(STEP_EVENTS_ENV).lower() not in ("false", "0", "no", "off")
    return OtelTelemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, step_events=step_events
    )


class OtelTelemetry:
    """The OpenTelemetry `Telemetry`: one tracer and one meter, shared by every request.

    Either provider may be None (that signal is off). Build it with `setup_telemetry`.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        step_events: bool = True,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracing = tracer_provider is not None
        self.step_events = step_events  # one span event per MCMC step (block spans count them anyway)
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(
            INSTRUMENTATION_NAME, __version__
        )
        self.instruments = Instruments(meter_provider)

    def request(
        self,
        *,
        request_id: str,
        params: SamplingParams,
        model: str,
        engine: str,
        prompt_tokens: int,
        tenant: str,
    ) -> RequestObserver:
        """Start following one request; its span is a child of the current (gRPC server) span if any."""
        return OtelRequestObserver(
            tracer=self.tracer,
            instruments=self.instruments,
            tracing=self.tracing,
            step_events=self.step_events,
            request_id=request_id,
            params=params,
            model=model,
            engine=engine,
            prompt_tokens=prompt_tokens,
            tenant=tenant,
        )

    def set_queue_depth(self, depth: int) -> None:
        self.instruments.queue_depth.set(depth)

    def record_rejection(self, reason: str) -> None:
        self.instruments.rejections.add(1, {"reason": reason})

    def server_interceptors(self) -> Sequence[Any]:
        """For a gRPC server: the aio server interceptor of opentelemetry-instrumentation-grpc (health
        and reflection excluded); empty when tracing is off."""
        if self.tracer_provider is None:
            return ()
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        quiet = filters.any_of(
            filters.health_check(),
            filters.service_prefix("grpc.reflection."),
        )
        return (aio_server_interceptor(tracer_provider=self.tracer_provider, filter_=filters.negate(quiet)),)

    def instrument_http_app(self, app: Any) -> None:
        """http.* server spans for the HTTP API's FastAPI app (opentelemetry-instrumentation-fastapi;
        health and readiness probes excluded); nothing when tracing is off."""
        if self.tracer_provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            excluded_urls="health,ready",
        )

    def force_flush(self, timeout_millis: int = 30_000) -> None:
        """Export everything recorded so far (tests and benchmarks)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(timeout_millis)
        if self.meter_provider is not None:
            self.meter_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


__all__ = ["STEP_EVENTS_ENV", "TRACES_FILE_ENV", "JsonLinesSpanExporter", "OtelTelemetry", "setup_telemetry"]
