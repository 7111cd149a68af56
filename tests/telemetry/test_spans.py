"""The span tree of one request: Reason -> sampling -> block spans with MCMC steps as events."""

from __future__ import annotations

import math

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from powersampling.engines.toy import ToyEngine, demo_engine
from powersampling.errors import EngineError
from powersampling.results import CacheStatus
from powersampling.telemetry.otel import OtelTelemetry, setup_telemetry

from tests.telemetry.helpers import by_name, drive, small_params


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_request_yields_reason_sampling_and_block_spans(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    assert isinstance(telemetry, OtelTelemetry)
    params = small_params(n=2, token_budget=400)
    results = await drive(telemetry, params)
    spans = exporter.get_finished_spans()

    (reason,) = by_name(spans, "Reason")
    (sampling,) = by_name(spans, "sampling")
    blocks = by_name(spans, "block")
    assert reason.parent is None and reason.kind is SpanKind.SERVER  # no gRPC span above it here
    assert sampling.parent is not None and sampling.parent.span_id == reason.context.span_id
    assert all(b.parent is not None and b.parent.span_id == sampling.context.span_id for b in blocks)
    assert {s.context.trace_id for s in spans} == {reason.context.trace_id}
    assert all(reason.start_time <= b.start_time <= b.end_time <= reason.end_time for b in blocks)

    # One block span per (chain, block) that ran.
    chains = {
        (b.attributes["powersampling.chain_index"], b.attributes["powersampling.block_index"]) for b in blocks
    }
    assert len(chains) == len(blocks)
    assert {c for c, _ in chains} == {0, 1}

    # MCMC steps as events: one per step taken, and the counts add up to the results.
    steps = [e for b in blocks for e in b.events if e.name == "mcmc.step"]
    total_steps = sum(r.mcmc_steps for r in results)
    total_accepted = sum(r.accepted_steps for r in results)
    assert total_steps > 0
    assert len(steps) == total_steps
    assert sum(bool(e.attributes["accepted"]) for e in steps) == total_accepted
    step = steps[0].attributes
    assert set(step) == {
        "resample_index",
        "current_length",
        "proposal_length",
        "log_acceptance_ratio",
        "accepted",
        "changed",
    }
    assert 0 <= step["resample_index"] < step["current_length"]

    a = reason.attributes
    assert a["powersampling.steps_taken"] == total_steps
    assert a["powersampling.steps_accepted"] == total_accepted
    assert a["powersampling.acceptance_rate"] == pytest.approx(total_accepted / total_steps)
    assert a["powersampling.change_rate"] == pytest.approx(
        sum(r.changed_steps for r in results) / total_steps
    )
    assert a["powersampling.tokens_proposed"] == sum(r.tokens_spent for r in results)
    assert a["powersampling.tokens_kept"] == sum(len(r.token_ids) for r in results)
    assert a["powersampling.budget_spent"] == a["powersampling.tokens_proposed"]
    assert a["powersampling.budget_utilisation"] == pytest.approx(
        a["powersampling.tokens_proposed"] / (2 * 400)
    )
    assert a["powersampling.token_budget"] == 400
    assert a["powersampling.method"] == "power"
    assert a["powersampling.alpha"] == 4.0
    assert a["powersampling.block_size"] == 8
    assert a["powersampling.mcmc_steps"] == 4
    assert a["powersampling.n"] == 2
    assert a["powersampling.cache.status"] == "miss"
    assert a["powersampling.resumed_from_block"] == 0
    assert a["powersampling.request_id"] == "req-1"
    assert a["powersampling.engine"] == "toy"
    assert a["gen_ai.operation.name"] == "text_completion"
    assert a["gen_ai.provider.name"] == "powersampling"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "toy-demo"
    assert a["gen_ai.request.seed"] == 11
    assert a["gen_ai.request.temperature"] == pytest.approx(0.25)
    assert a["gen_ai.request.max_tokens"] == 32
    assert a["gen_ai.request.choice.count"] == 2
    assert a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == a["powersampling.tokens_kept"]
    assert list(a["gen_ai.response.finish_reasons"]) == [r.finish_reason for r in results]
    assert a["powersampling.time_to_first_event_s"] >= 0
    assert [e.name for e in reason.events] == ["first_event_sent"]

    # Block attributes agree with the block's own events.
    for b in blocks:
        ba = b.attributes
        events = [e for e in b.events if e.name == "mcmc.step"]
        assert ba["powersampling.steps_taken"] == len(events)
        assert ba["powersampling.steps_accepted"] == sum(bool(e.attributes["accepted"]) for e in events)
        assert ba["powersampling.planned_steps"] >= ba["powersampling.steps_taken"]
        assert ba["powersampling.tokens_spent"] > 0
        assert isinstance(ba["powersampling.revised"], bool)
    # Per chain, block token spend adds up to the chain's total.
    for r in results:
        spent = sum(
            b.attributes["powersampling.tokens_spent"]
            for b in blocks
            if b.attributes["powersampling.chain_index"] == r.chain_index
        )
        assert spent == r.tokens_spent


async def test_skipped_steps_are_events_too(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    # A model that rarely stops and a tight budget: some steps do not fit and are skipped.
    engine = ToyEngine(
        vocab_size=4,
        eos_id=3,
        next_token_logprobs=lambda prefix: [math.log(0.4), math.log(0.3), math.log(0.27), math.log(0.03)],
        token_strings=["a", "b", "c", "</s>"],
    )
    params = small_params(max_new_tokens=16, block_size=16, mcmc_steps=4, seed=0, token_budget=50)
    results = await drive(telemetry, params, engine=engine, prompt=[0])
    spans = exporter.get_finished_spans()
    skipped = [e for b in by_name(spans, "block") for e in b.events if e.name == "mcmc.step_skipped"]
    assert results[0].skipped_steps > 0
    assert len(skipped) == results[0].skipped_steps
    assert by_name(spans, "Reason")[0].attributes["powersampling.steps_skipped"] == results[0].skipped_steps


async def test_baseline_has_one_block_and_no_steps(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    await drive(telemetry, small_params(method="sample"))
    spans = exporter.get_finished_spans()
    (block,) = by_name(spans, "block")
    assert not [e for e in block.events if e.name.startswith("mcmc.")]
    reason = by_name(spans, "Reason")[0]
    assert reason.attributes["powersampling.method"] == "sample"
    assert reason.attributes["powersampling.acceptance_rate"] == 0.0


async def test_cache_hit_has_no_sampling_span(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    engine = demo_engine()
    params = small_params()
    results = await drive(telemetry, params, engine=engine)
    exporter.clear()
    observer = telemetry.request(
        request_id="again", params=params, model="toy-demo", engine="toy", prompt_tokens=5, tenant=""
    )
    observer.on_cache_status(CacheStatus.HIT, 0)
    observer.on_first_event_sent()
    observer.finish(results)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["Reason"]
    assert spans[0].attributes["powersampling.cache.status"] == "hit"


class FailingEngine:
    """The demo engine, failing on its n-th extend call."""

    def __init__(self, fail_at: int) -> None:
        self.inner = demo_engine()
        self.calls = 0
        self.fail_at = fail_at

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def extend(self, requests: object) -> object:
        self.calls += 1
        if self.calls == self.fail_at:
            raise EngineError("the engine fell over")
        return await self.inner.extend(requests)


async def test_error_sets_status_and_records_the_exception(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    with pytest.raises((EngineError, ExceptionGroup)):  # the sampler's TaskGroup may wrap it
        await drive(telemetry, small_params(), engine=FailingEngine(fail_at=7))  # type: ignore[arg-type]
    spans = exporter.get_finished_spans()
    (reason,) = by_name(spans, "Reason")
    assert reason.status.status_code is StatusCode.ERROR
    assert "fell over" in (reason.status.description or "")
    assert reason.attributes["error.type"] == "EngineError"
    assert any(e.name == "exception" for e in reason.events)
    (sampling,) = by_name(spans, "sampling")
    assert sampling.status.status_code is StatusCode.ERROR
    # The block that was under way is ended too (no span is left open).
    assert by_name(spans, "block")
    assert reason.attributes["powersampling.steps_taken"] >= 1


async def test_finish_twice_is_harmless(exporter: InMemorySpanExporter) -> None:
    telemetry = setup_telemetry(span_exporter=exporter)
    params = small_params()
    observer = telemetry.request(
        request_id="r", params=params, model="m", engine="toy", prompt_tokens=1, tenant=""
    )
    observer.finish(None, RuntimeError("cancelled"))
    observer.finish(None)
    assert len(exporter.get_finished_spans()) == 1
