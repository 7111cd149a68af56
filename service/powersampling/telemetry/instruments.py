"""The service's OpenTelemetry metric instruments: names, bucket boundaries and one `Instruments` set.

The Prometheus names the Collector gives them are listed in `powersampling.telemetry.otel`.
"""

from __future__ import annotations

from opentelemetry import metrics

from powersampling import __version__

INSTRUMENTATION_NAME = "powersampling"

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


class Instruments:
    """Every instrument the service records, created once per meter provider (None: a no-op meter)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
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


__all__ = ["DURATION_BUCKETS_S", "INSTRUMENTATION_NAME", "RATIO_BUCKETS", "Instruments"]
