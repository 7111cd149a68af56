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
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from powersampling import __version__
from powersampling.api import ReasonResult
from powersampling.cache.base import CacheStatus
from powersampling.events import (
    BlockFinished,
    ChainFinished,
    ChainStarted,
    McmcStepSkipped,
    McmcStepTaken,
    SamplerEvent,
    SmcChunkFinished,
    SmcSweepFinished,
)
from powersampling.params import Method, SamplingParams
from powersampling.telemetry.base import NoTelemetry, RequestObserver, Telemetry

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "powersampling"
TRACES_FILE_ENV = "POWERSAMPLING_TRACES_FILE"
STEP_EVENTS_ENV = "POWERSAMPLING_TRACES_MCMC_STEPS"  # "false": no per-step span events

# Span names.
REQUEST_SPAN = "Reason"
SAMPLING_SPAN = "sampling"
BLOCK_SPAN = "block"
SWEEP_SPAN = "sweep"
ESS_EVENT = "smc.ess"
RESAMPLE_EVENT = "smc.resample"
STEP_EVENT = "mcmc.step"
SKIPPED_STEP_EVENT = "mcmc.step_skipped"
FIRST_EVENT_SENT_EVENT = "first_event_sent"

# GenAI semantic conventions. The service completes a prompt (a chat template, when the model has one,
# is an engine detail), so the operation is "text_completion". gen_ai.provider.name superseded
# gen_ai.system; both are set for backends that know only the older one.
GEN_AI_OPERATION = "text_completion"
GEN_AI_PROVIDER = "powersampling"

# Metric names (see the module docstring for their Prometheus names).
M_REQUEST_DURATION = "powersampling.request.duration"
M_TIME_TO_FIRST_EVENT = "powersampling.time_to_first_event"
M_ACCEPTANCE_RATE = "powersampling.acceptance_rate"
M_BUDGET_UTILISATION = "powersampling.budget.utilisation"
M_TOKENS_PROPOSED = "powersampling.tokens.proposed"
M_TOKENS_KEPT = "powersampling.tokens.kept"
M_CACHE_HITS = "powersampling.cache.hits"
M_CACHE_MISSES = "powersampling.cache.misses"
M_QUEUE_DEPTH = "powersampling.queue.depth"
M_REJECTIONS = "powersampling.rejections"
M_GEN_AI_SERVER_DURATION = "gen_ai.server.request.duration"

# Bucket boundaries: the GenAI conventions' duration buckets, extended for minutes-long MCMC runs.
DURATION_BUCKETS_S = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 655.36,
)  # fmt: skip
RATIO_BUCKETS = tuple(i / 20 for i in range(21))

_EXPORTER_ALIASES = {"otlp_proto_grpc": ("otlp", "grpc"), "otlp_proto_http": ("otlp", "http/protobuf")}


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
    if _env_flag("OTEL_SDK_DISABLED"):
        return NoTelemetry()

    processors: list[Any] = []
    if span_exporter is not None:
        processors.append(SimpleSpanProcessor(span_exporter))
    else:
        processors.extend(BatchSpanProcessor(e) for e in _span_exporters_from_env())

    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    else:
        readers.extend(PeriodicExportingMetricReader(e) for e in _metric_exporters_from_env())

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
    step_events = _env(STEP_EVENTS_ENV).lower() not in ("false", "0", "no", "off")
    return OtelTelemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, step_events=step_events
    )


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _env_flag(name: str) -> bool:
    return _env(name).lower() in ("true", "1", "yes", "on")


def _exporter_names(signal: str) -> list[str]:
    """Exporter names for "TRACES" or "METRICS": the variable's list, or otlp when an endpoint is set."""
    raw = _env(f"OTEL_{signal}_EXPORTER")
    if not raw:
        has_endpoint = _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [] if "none" in names else names


def _otlp_protocol(signal: str, alias: str | None) -> str:
    if alias is not None:
        return alias
    protocol = (_env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")).lower()
    return protocol or "grpc"


def _span_exporters_from_env() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names("TRACES"):
        kind, protocol = _EXPORTER_ALIASES.get(name, (name, None))
        if kind == "otlp":
            protocol = _otlp_protocol("TRACES", protocol)
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
            else:
                log.warning("OTLP protocol %r is not supported (grpc, http/protobuf); no traces", protocol)
                continue
            exporters.append(OTLPSpanExporter())
        elif kind == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER %r is not supported (otlp, console, none); ignored", name)
    path = _env(TRACES_FILE_ENV)
    if path:
        exporters.append(JsonLinesSpanExporter(path))
    return exporters


def _metric_exporters_from_env() -> list[MetricExporter]:
    exporters: list[MetricExporter] = []
    for name in _exporter_names("METRICS"):
        kind, protocol = _EXPORTER_ALIASES.get(name, (name, None))
        if kind == "otlp":
            protocol = _otlp_protocol("METRICS", protocol)
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
                    OTLPMetricExporter,
                )
            else:
                log.warning("OTLP protocol %r is not supported (grpc, http/protobuf); no metrics", protocol)
                continue
            exporters.append(OTLPMetricExporter())
        elif kind == "console":
            exporters.append(ConsoleMetricExporter())
        else:
            log.warning("OTEL_METRICS_EXPORTER %r is not supported (otlp, console, none); ignored", name)
    return exporters


class JsonLinesSpanExporter(ConsoleSpanExporter):
    """Appends each finished span to a file as one JSON line (`ReadableSpan.to_json` without indent)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        super().__init__(out=self._file, formatter=_span_json_line)

    def shutdown(self) -> None:
        super().shutdown()
        if not self._file.closed:
            self._file.close()


def _span_json_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


# ------------------------------------------------------------------------------------------ telemetry


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
        meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(INSTRUMENTATION_NAME, __version__)
        self.request_duration = meter.create_histogram(
            M_REQUEST_DURATION, "s", "Reason request duration, from admission to the final answer",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )  # fmt: skip
        self.time_to_first_event = meter.create_histogram(
            M_TIME_TO_FIRST_EVENT, "s", "Time from admission to the first event sent on the stream",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )  # fmt: skip
        self.acceptance_rate = meter.create_histogram(
            M_ACCEPTANCE_RATE, "1", "Accepted / proposed MCMC steps, per request that ran MCMC steps",
            explicit_bucket_boundaries_advisory=RATIO_BUCKETS,
        )  # fmt: skip
        self.budget_utilisation = meter.create_histogram(
            M_BUDGET_UTILISATION, "1", "Proposal tokens spent / token budget, per request with a budget",
            explicit_bucket_boundaries_advisory=RATIO_BUCKETS,
        )  # fmt: skip
        self.tokens_proposed = meter.create_counter(
            M_TOKENS_PROPOSED, "{token}", "Proposal tokens generated (initial extensions and MCMC proposals)"
        )
        self.tokens_kept = meter.create_counter(M_TOKENS_KEPT, "{token}", "Tokens in the returned answers")
        self.cache_hits = meter.create_counter(
            M_CACHE_HITS, "{request}", "Requests served from the cache, fully (hit) or partly (resumed)"
        )
        self.cache_misses = meter.create_counter(
            M_CACHE_MISSES, "{request}", "Cacheable requests that found nothing stored"
        )
        self.queue_depth = meter.create_gauge(M_QUEUE_DEPTH, "{request}", "Requests waiting for admission")
        self.queue_depth.set(0)  # the series exists (at 0) before the first request ever waits
        self.rejections = meter.create_counter(
            M_REJECTIONS, "{request}", "Requests refused by admission control, by reason"
        )
        self.gen_ai_duration = meter.create_histogram(
            M_GEN_AI_SERVER_DURATION, "s", "GenAI server request duration (time to last byte)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )  # fmt: skip

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
        return _RequestObserver(
            self,
            request_id=request_id,
            params=params,
            model=model,
            engine=engine,
            prompt_tokens=prompt_tokens,
            tenant=tenant,
        )

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def record_rejection(self, reason: str) -> None:
        self.rejections.add(1, {"reason": reason})

    def server_interceptors(self) -> Sequence[Any]:
        """The gRPC aio server interceptor of opentelemetry-instrumentation-grpc (health and reflection
        excluded); empty when tracing is off."""
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


# ------------------------------------------------------------------------------------- per request


@dataclass(slots=True)
class _Block:
    """The open block of one chain: its span is created at its first event, back-dated to its start."""

    chain_index: int
    block_index: int
    start_ns: int
    tokens_at_start: int | None  # the chain's cumulative tokens_spent before the block (None: unknown)
    span: trace.Span | None = None
    steps: int = 0
    accepted: int = 0
    changed: int = 0
    skipped: int = 0


@dataclass(slots=True)
class _Sweep:
    """The open Power-SMC sweep of one chain: its span is created at its first chunk, back-dated."""

    sweep_index: int
    start_ns: int
    span: trace.Span | None = None


@dataclass(slots=True)
class _Totals:
    """What the events showed (used when a request fails before it has results)."""

    steps: int = 0
    accepted: int = 0
    changed: int = 0
    skipped: int = 0
    tokens_by_chain: dict[int, int] = field(default_factory=dict)


class _RequestObserver:
    """Turns one request's sampler events into spans and, at the end, metrics."""

    def __init__(
        self,
        telemetry: OtelTelemetry,
        *,
        request_id: str,
        params: SamplingParams,
        model: str,
        engine: str,
        prompt_tokens: int,
        tenant: str,
    ) -> None:
        self._t = telemetry
        self._started = time.perf_counter()
        self._params = params
        self._model = model
        self._tracing = telemetry.tracing
        self._cache_status: str | None = None
        self._resumed_from_block = 0
        self._first_event_s: float | None = None
        self._finished = False
        self._totals = _Totals()
        self._blocks: dict[int, _Block] = {}
        self._sweeps: dict[int, _Sweep] = {}  # Power-SMC, by chain
        self._sampling: trace.Span | None = None
        self._sampling_ctx: otel_context.Context | None = None
        self._metric_attrs = {
            "gen_ai.operation.name": GEN_AI_OPERATION,
            "gen_ai.request.model": model,
            "powersampling.method": params.method.value,
        }
        self._span: trace.Span = trace.INVALID_SPAN
        self._step_events = telemetry.step_events
        if not self._tracing:
            return
        parent = trace.get_current_span()
        kind = SpanKind.INTERNAL if parent.get_span_context().is_valid else SpanKind.SERVER
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": GEN_AI_OPERATION,
            "gen_ai.provider.name": GEN_AI_PROVIDER,
            "gen_ai.system": GEN_AI_PROVIDER,
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.usage.input_tokens": prompt_tokens,
            "powersampling.request_id": request_id,
            "powersampling.tenant": tenant,
            "powersampling.engine": engine,
            "powersampling.method": params.method.value,
            "powersampling.alpha": params.alpha,
            "powersampling.block_size": params.effective_block_size,
            "powersampling.mcmc_steps": params.effective_mcmc_steps,
            "powersampling.n": params.n,
        }
        if params.seed is not None:
            attributes["gen_ai.request.seed"] = params.seed
        if params.n != 1:
            attributes["gen_ai.request.choice.count"] = params.n
        if params.stop:
            attributes["gen_ai.request.stop_sequences"] = list(params.stop)
        if params.token_budget is not None:
            attributes["powersampling.token_budget"] = params.token_budget
        if params.method is Method.SMC:
            attributes.update(
                {
                    "powersampling.particles": params.effective_particles,
                    "powersampling.sweeps": params.effective_sweeps,
                    "powersampling.chunk_size": params.effective_chunk_size,
                    "powersampling.resample_threshold": params.effective_resample_threshold,
                    "powersampling.ramp_tokens": params.effective_ramp_tokens,
                }
            )
        self._span = telemetry.tracer.start_span(REQUEST_SPAN, kind=kind, attributes=attributes)
        self._request_ctx = trace.set_span_in_context(self._span)
        # A trace the sampler dropped (OTEL_TRACES_SAMPLER) needs no block bookkeeping at all.
        self._tracing = self._span.is_recording()

    # -- what the server reports

    def on_cache_status(self, status: CacheStatus, resumed_from_block: int) -> None:
        self._cache_status = str(status)
        self._resumed_from_block = resumed_from_block
        if self._tracing:
            self._span.set_attribute("powersampling.cache.status", self._cache_status)
            self._span.set_attribute("powersampling.resumed_from_block", resumed_from_block)

    def on_event(self, event: SamplerEvent) -> None:
        # Ordered by frequency: steps dominate.
        if isinstance(event, McmcStepTaken):
            self._on_step(event)
        elif isinstance(event, BlockFinished):
            self._on_block_finished(event)
        elif isinstance(event, SmcChunkFinished):
            self._on_chunk_finished(event)
        elif isinstance(event, SmcSweepFinished):
            self._on_sweep_finished(event)
        elif isinstance(event, McmcStepSkipped):
            self._on_step_skipped(event)
        elif isinstance(event, ChainStarted):
            self._on_chain_started(event)
        elif isinstance(event, ChainFinished):
            self._on_chain_finished(event)

    def on_first_event_sent(self) -> None:
        if self._first_event_s is not None or self._finished:
            return
        self._first_event_s = time.perf_counter() - self._started
        self._t.time_to_first_event.record(self._first_event_s, self._metric_attrs, self._exemplar_ctx())
        if self._tracing:
            self._span.set_attribute("powersampling.time_to_first_event_s", self._first_event_s)
            self._span.add_event(FIRST_EVENT_SENT_EVENT)

    def finish(self, results: Sequence[ReasonResult] | None, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        duration_s = time.perf_counter() - self._started
        summary = _summarise(results, self._totals, self._params)
        if self._tracing:
            self._end_spans(results, summary, error)
        self._record_metrics(summary, duration_s, error)

    # -- sampler events

    def _on_chain_started(self, e: ChainStarted) -> None:
        if not self._tracing:
            return
        if self._sampling is None:
            self._start_sampling(e.num_blocks)
        if self._params.method is Method.SMC:
            self._sweeps[e.chain_index] = _Sweep(-1, time.time_ns())  # the index is known at its first chunk
            return
        self._blocks[e.chain_index] = _Block(
            e.chain_index, e.resumed_from_block, time.time_ns(), 0 if e.resumed_from_block == 0 else None
        )

    def _on_step(self, e: McmcStepTaken) -> None:
        totals = self._totals
        totals.steps += 1
        totals.accepted += e.accepted
        totals.changed += e.changed
        totals.tokens_by_chain[e.chain_index] = e.tokens_spent
        if not self._tracing:
            return
        block = self._block(e.chain_index, e.block_index)
        block.steps += 1
        block.accepted += e.accepted
        block.changed += e.changed
        if not self._step_events:
            return
        assert block.span is not None
        block.span.add_event(
            STEP_EVENT,
            {
                # Six attributes: each one costs ~10 us to encode for OTLP, per step. The suffix
                # resampled is current_length - resample_index; the step index is the event's order.
                "resample_index": e.resample_index,
                "current_length": e.current_length,
                "proposal_length": e.proposal_length,
                "log_acceptance_ratio": e.log_acceptance_ratio,
                "accepted": e.accepted,
                "changed": e.changed,
            },
        )

    def _on_step_skipped(self, e: McmcStepSkipped) -> None:
        self._totals.skipped += 1
        if not self._tracing:
            return
        block = self._block(e.chain_index, e.block_index)
        block.skipped += 1
        if not self._step_events:
            return
        assert block.span is not None
        block.span.add_event(
            SKIPPED_STEP_EVENT,
            {"resample_index": e.resample_index, "cost_bound": e.cost_bound},
        )

    def _on_block_finished(self, e: BlockFinished) -> None:
        state = e.state
        self._totals.tokens_by_chain[e.chain_index] = state.tokens_spent
        if not self._tracing:
            return
        block = self._block(e.chain_index, e.block_index)
        span = block.span
        assert span is not None
        span.set_attributes(
            {
                "powersampling.num_blocks": e.num_blocks,
                "powersampling.planned_steps": e.planned_steps,
                "powersampling.steps_taken": block.steps,
                "powersampling.steps_accepted": block.accepted,
                "powersampling.steps_changed": block.changed,
                "powersampling.steps_skipped": block.skipped,
                "powersampling.acceptance_rate": block.accepted / block.steps if block.steps else 0.0,
                "powersampling.revised": e.revised,
                "powersampling.length": len(state.token_ids),
                "powersampling.chain_tokens_spent": state.tokens_spent,
            }
        )
        if block.tokens_at_start is not None:
            span.set_attribute("powersampling.tokens_spent", state.tokens_spent - block.tokens_at_start)
        if state.finish_reason is not None:
            span.set_attribute("powersampling.finish_reason", state.finish_reason)
        span.end()
        if state.finish_reason is None and e.block_index + 1 < e.num_blocks:
            # The chain's next block starts now.
            self._blocks[e.chain_index] = _Block(
                e.chain_index, e.block_index + 1, time.time_ns(), state.tokens_spent
            )
        else:
            del self._blocks[e.chain_index]

    def _on_chunk_finished(self, e: SmcChunkFinished) -> None:
        self._totals.tokens_by_chain[e.chain_index] = e.tokens_spent
        if not self._tracing:
            return
        span = self._sweep(e.chain_index, e.sweep_index)
        span.add_event(
            ESS_EVENT,
            {"chunk_index": e.chunk_index, "ess": e.ess, "particles_alive": e.particles_alive},
        )
        if e.resampled:
            span.add_event(
                RESAMPLE_EVENT,
                {"chunk_index": e.chunk_index, "ess": e.ess, "unique_ancestors": e.unique_ancestors},
            )

    def _on_sweep_finished(self, e: SmcSweepFinished) -> None:
        state = e.state
        totals = self._totals
        totals.tokens_by_chain[e.chain_index] = state.tokens_spent
        if e.sweep_index > 0:  # later sweeps are particle independent MH steps
            totals.steps += 1
            totals.accepted += e.accepted
        if not self._tracing:
            return
        span = self._sweep(e.chain_index, e.sweep_index)
        span.set_attributes(
            {
                "powersampling.num_sweeps": e.num_sweeps,
                "powersampling.ess_min": state.sweep_ess_min,
                "powersampling.resamples": state.sweep_resamples,
                "powersampling.unique_ancestors": state.unique_ancestors,
                "powersampling.log_z_hat": e.log_z_hat,
                "powersampling.pimh.accepted": e.accepted,
                "powersampling.length": len(e.answer_token_ids),
                "powersampling.chain_tokens_spent": state.tokens_spent,
            }
        )
        span.end()
        self._sweeps[e.chain_index] = _Sweep(e.sweep_index + 1, time.time_ns())

    def _sweep(self, chain_index: int, sweep_index: int) -> trace.Span:
        """The chain's open sweep span, started (back-dated to the sweep's start) on first use."""
        sweep = self._sweeps.get(chain_index)
        if sweep is not None and sweep.span is not None and sweep.sweep_index != sweep_index:
            sweep.span.end()  # out of order: close the old one rather than leak it
            sweep = None
        if sweep is None:
            sweep = _Sweep(sweep_index, time.time_ns())
        sweep.sweep_index = sweep_index
        self._sweeps[chain_index] = sweep
        if sweep.span is None:
            if self._sampling is None:
                self._start_sampling(0)
            sweep.span = self._t.tracer.start_span(
                SWEEP_SPAN,
                context=self._sampling_ctx,
                start_time=sweep.start_ns,
                attributes={
                    "powersampling.chain_index": chain_index,
                    "powersampling.sweep_index": sweep_index,
                },
            )
        return sweep.span

    def _end_sweeps(self) -> None:
        """End sweep spans cut short (an error, a cancel, a deadline)."""
        for sweep in self._sweeps.values():
            if sweep.span is not None:
                sweep.span.set_attribute("powersampling.interrupted", True)
                sweep.span.end()
        self._sweeps.clear()

    def _on_chain_finished(self, e: ChainFinished) -> None:
        self._totals.tokens_by_chain[e.chain_index] = e.state.tokens_spent
        sweep = self._sweeps.pop(e.chain_index, None)
        if sweep is not None and sweep.span is not None:
            sweep.span.end()
        block = self._blocks.pop(e.chain_index, None)
        if block is not None and block.span is not None:
            block.span.end()

    def _start_sampling(self, num_blocks: int) -> None:
        self._sampling = self._t.tracer.start_span(
            SAMPLING_SPAN,
            context=self._request_ctx,
            attributes={
                "powersampling.method": self._params.method.value,
                "powersampling.n": self._params.n,
                "powersampling.num_blocks": num_blocks,
                "powersampling.resumed_from_block": self._resumed_from_block,
            },
        )
        self._sampling_ctx = trace.set_span_in_context(self._sampling)

    def _block(self, chain_index: int, block_index: int) -> _Block:
        """The chain's open block, its span started (back-dated) on first use."""
        block = self._blocks.get(chain_index)
        if block is None or block.block_index != block_index:
            # Events without a ChainStarted (or out of order): start the block here.
            block = _Block(chain_index, block_index, time.time_ns(), None)
            self._blocks[chain_index] = block
        if block.span is None:
            if self._sampling is None:
                self._start_sampling(0)
            block.span = self._t.tracer.start_span(
                BLOCK_SPAN,
                context=self._sampling_ctx,
                start_time=block.start_ns,
                attributes={
                    "powersampling.chain_index": chain_index,
                    "powersampling.block_index": block_index,
                },
            )
        return block

    # -- the end

    def _end_spans(
        self, results: Sequence[ReasonResult] | None, summary: _Summary, error: BaseException | None
    ) -> None:
        # Blocks still open were cut short (an error, a cancel, a deadline): end them, so the trace
        # shows where the work stopped.
        for block in list(self._blocks.values()):
            if block.span is None and error is None:
                continue
            span = self._block(block.chain_index, block.block_index).span
            assert span is not None
            span.set_attributes(
                {
                    "powersampling.steps_taken": block.steps,
                    "powersampling.steps_accepted": block.accepted,
                    "powersampling.steps_changed": block.changed,
                    "powersampling.steps_skipped": block.skipped,
                    "powersampling.interrupted": True,
                }
            )
            span.end()
        self._blocks.clear()
        self._end_sweeps()
        span = self._span
        attributes: dict[str, Any] = {
            "powersampling.steps_taken": summary.steps,
            "powersampling.steps_accepted": summary.accepted,
            "powersampling.steps_changed": summary.changed,
            "powersampling.steps_skipped": summary.skipped,
            "powersampling.acceptance_rate": summary.acceptance_rate,
            "powersampling.change_rate": summary.change_rate,
            "powersampling.tokens_proposed": summary.tokens_proposed,
        }
        if summary.tokens_kept is not None:
            attributes["powersampling.tokens_kept"] = summary.tokens_kept
            attributes["gen_ai.usage.output_tokens"] = summary.tokens_kept
        if self._params.token_budget is not None:
            attributes["powersampling.budget_spent"] = summary.tokens_proposed
        if summary.budget_utilisation is not None:
            attributes["powersampling.budget_utilisation"] = summary.budget_utilisation
        smc = [r.smc for r in results or () if r.smc is not None]
        if smc:
            attributes.update(
                {
                    "powersampling.ess_min": min(s.ess_min for s in smc),
                    "powersampling.resamples": sum(s.resamples for s in smc),
                    "powersampling.unique_ancestors": min(s.unique_ancestors for s in smc),
                    "powersampling.log_z_hat": [s.log_z_hat for s in smc],  # one per chain
                    "powersampling.pimh.acceptance_rate": summary.acceptance_rate,
                }
            )
        if results:
            attributes["gen_ai.response.model"] = results[0].model
            attributes["gen_ai.response.finish_reasons"] = [r.finish_reason for r in results]
            attributes["gen_ai.request.seed"] = results[0].seed
        span.set_attributes(attributes)
        if self._sampling is not None:
            if error is not None:
                self._sampling.set_status(Status(StatusCode.ERROR, _describe(error)))
            self._sampling.set_attributes(
                {k: v for k, v in attributes.items() if k.startswith("powersampling.")}
            )
            self._sampling.end()
        if error is not None:
            span.set_attribute("error.type", _error_type(error))
            span.record_exception(_unwrap(error))
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
        span.end()

    def _exemplar_ctx(self) -> otel_context.Context | None:
        """Measurements carry the request span's context, so exemplars point at its trace."""
        return self._request_ctx if self._tracing else None

    def _record_metrics(self, summary: _Summary, duration_s: float, error: BaseException | None) -> None:
        t = self._t
        ctx = self._exemplar_ctx()
        attrs = dict(self._metric_attrs)
        if self._cache_status is not None:
            attrs["powersampling.cache.status"] = self._cache_status
        if error is not None:
            attrs["error.type"] = _error_type(error)
        t.request_duration.record(duration_s, attrs, ctx)
        gen_ai_attrs = {
            "gen_ai.operation.name": GEN_AI_OPERATION,
            "gen_ai.provider.name": GEN_AI_PROVIDER,
            "gen_ai.request.model": self._model,
        }
        if error is not None:
            gen_ai_attrs["error.type"] = attrs["error.type"]
        t.gen_ai_duration.record(duration_s, gen_ai_attrs, ctx)

        if self._cache_status in (CacheStatus.HIT, CacheStatus.RESUMED):
            t.cache_hits.add(1, {"powersampling.cache.status": self._cache_status})
        elif self._cache_status == CacheStatus.MISS:
            t.cache_misses.add(1)
        if self._cache_status == CacheStatus.HIT:
            return  # no sampling ran: nothing proposed, no acceptance to report
        base = self._metric_attrs
        if summary.tokens_proposed:
            t.tokens_proposed.add(summary.tokens_proposed, base)
        if summary.tokens_kept:
            t.tokens_kept.add(summary.tokens_kept, base)
        if error is None and summary.steps:
            t.acceptance_rate.record(summary.acceptance_rate, base, ctx)
        if error is None and summary.budget_utilisation is not None:
            t.budget_utilisation.record(summary.budget_utilisation, base, ctx)


@dataclass(frozen=True, slots=True)
class _Summary:
    steps: int
    accepted: int
    changed: int
    skipped: int
    tokens_proposed: int
    tokens_kept: int | None
    budget_utilisation: float | None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def change_rate(self) -> float:
        return self.changed / self.steps if self.steps else 0.0


def _summarise(results: Sequence[ReasonResult] | None, totals: _Totals, params: SamplingParams) -> _Summary:
    """Request totals: from the results when there are some (they include resumed chains' history),
    else from the events seen."""
    if results:
        steps = sum(r.mcmc_steps for r in results)
        accepted = sum(r.accepted_steps for r in results)
        changed = sum(r.changed_steps for r in results)
        skipped = sum(r.skipped_steps for r in results)
        proposed = sum(r.tokens_spent for r in results)
        kept: int | None = sum(len(r.token_ids) for r in results)
        chains = len(results)
    else:
        steps, accepted, changed, skipped = totals.steps, totals.accepted, totals.changed, totals.skipped
        proposed = sum(totals.tokens_by_chain.values())
        kept = None
        chains = params.n
    utilisation = None
    if params.token_budget is not None and results:
        # The budget caps each chain's proposal tokens.
        utilisation = proposed / (params.token_budget * chains)
    return _Summary(steps, accepted, changed, skipped, proposed, kept, utilisation)


def _unwrap(error: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, as a TaskGroup raises them."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _error_type(error: BaseException) -> str:
    return type(_unwrap(error)).__qualname__


def _describe(error: BaseException) -> str:
    error = _unwrap(error)
    text = str(error) or type(error).__name__
    return text if len(text) <= 512 else text[:509] + "..."


__all__ = ["STEP_EVENTS_ENV", "TRACES_FILE_ENV", "JsonLinesSpanExporter", "OtelTelemetry", "setup_telemetry"]
