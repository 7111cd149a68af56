"""Power-SMC's spans: Reason -> sampling -> one sweep span per (chain, sweep), ESS and resample events."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from powersampling.telemetry.otel import OtelTelemetry, setup_telemetry

from tests.telemetry.helpers import by_name, drive, small_params


def smc_params(**options):
    defaults = {
        "method": "smc", "block_size": 192, "mcmc_steps": 10, "particles": 8, "sweeps": 3, "chunk_size": 4,
        "resample_threshold": 0.9,
    }  # fmt: skip
    defaults.update(options)
    # block_size and mcmc_steps are the MH defaults; small_params sets smaller ones, so restore them.
    return small_params(**defaults)


async def test_smc_request_yields_one_sweep_span_per_chain_and_sweep() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter)
    assert isinstance(telemetry, OtelTelemetry)
    results = await drive(telemetry, smc_params(n=2, token_budget=2000))
    spans = exporter.get_finished_spans()
    (reason,) = by_name(spans, "Reason")
    (sampling,) = by_name(spans, "sampling")
    sweeps = by_name(spans, "sweep")
    assert not by_name(spans, "block")
    assert all(s.parent is not None and s.parent.span_id == sampling.context.span_id for s in sweeps)
    assert all(reason.start_time <= s.start_time <= s.end_time <= reason.end_time for s in sweeps)
    ran = {
        (s.attributes["powersampling.chain_index"], s.attributes["powersampling.sweep_index"]) for s in sweeps
    }
    assert ran == {(c, k) for c, r in enumerate(results) for k in range(r.smc.sweeps)}

    for chain, r in enumerate(results):
        mine = sorted(
            (s for s in sweeps if s.attributes["powersampling.chain_index"] == chain),
            key=lambda s: s.attributes["powersampling.sweep_index"],
        )
        assert sum(s.attributes["powersampling.resamples"] for s in mine) == r.smc.resamples
        assert min(s.attributes["powersampling.ess_min"] for s in mine) == pytest.approx(r.smc.ess_min)
        assert mine[-1].attributes["powersampling.unique_ancestors"] == r.smc.unique_ancestors
        assert mine[0].attributes["powersampling.pimh.accepted"] is True
        assert sum(s.attributes["powersampling.pimh.accepted"] for s in mine[1:]) == r.accepted_steps
        kept = [s for s in mine if s.attributes["powersampling.pimh.accepted"]][-1]
        assert kept.attributes["powersampling.log_z_hat"] == r.smc.log_z_hat
        # ESS after every chunk, resample events exactly where the particles were resampled.
        for s in mine:
            ess = [e for e in s.events if e.name == "smc.ess"]
            resamples = [e for e in s.events if e.name == "smc.resample"]
            assert ess and all(0 < e.attributes["ess"] <= 1 for e in ess)
            assert len(resamples) == s.attributes["powersampling.resamples"]
            assert min(e.attributes["ess"] for e in ess) == pytest.approx(
                s.attributes["powersampling.ess_min"]
            )
    assert sum(r.smc.resamples for r in results) > 0  # threshold 0.9: the resample path was exercised

    a = reason.attributes
    assert a["powersampling.method"] == "smc"
    assert (a["powersampling.particles"], a["powersampling.sweeps"], a["powersampling.chunk_size"]) == (
        8,
        3,
        4,
    )
    assert a["powersampling.resamples"] == sum(r.smc.resamples for r in results)
    assert a["powersampling.ess_min"] == pytest.approx(min(r.smc.ess_min for r in results))
    assert a["powersampling.unique_ancestors"] == min(r.smc.unique_ancestors for r in results)
    assert list(a["powersampling.log_z_hat"]) == [r.smc.log_z_hat for r in results]
    steps = sum(r.mcmc_steps for r in results)
    assert steps == 2 * 2
    assert a["powersampling.pimh.acceptance_rate"] == pytest.approx(
        sum(r.accepted_steps for r in results) / steps
    )
    assert a["powersampling.tokens_proposed"] == sum(r.tokens_spent for r in results)
    assert sampling.attributes["powersampling.resamples"] == a["powersampling.resamples"]


async def test_mh_requests_have_no_sweep_spans_or_smc_attributes() -> None:
    exporter = InMemorySpanExporter()
    await drive(setup_telemetry(span_exporter=exporter), small_params())
    spans = exporter.get_finished_spans()
    assert not by_name(spans, "sweep")
    (reason,) = by_name(spans, "Reason")
    assert "powersampling.ess_min" not in reason.attributes
    assert "powersampling.particles" not in reason.attributes


async def test_a_failed_smc_run_ends_its_sweep_span_as_interrupted() -> None:
    from powersampling.errors import EngineError

    from tests.telemetry.test_spans import FailingEngine

    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter)
    with pytest.raises((EngineError, ExceptionGroup)):
        # 32 tokens in chunks of 4: at most 8 chunk calls per sweep; with this seed the 11th is in sweep 1.
        await drive(telemetry, smc_params(), engine=FailingEngine(fail_at=11))  # type: ignore[arg-type]
    spans = exporter.get_finished_spans()
    sweeps = sorted(by_name(spans, "sweep"), key=lambda s: s.attributes["powersampling.sweep_index"])
    assert [s.attributes["powersampling.sweep_index"] for s in sweeps] == [0, 1]
    assert "powersampling.interrupted" not in sweeps[0].attributes
    assert sweeps[1].attributes["powersampling.interrupted"] is True
    assert [e.name for e in sweeps[1].events].count("smc.ess") >= 1
    (reason,) = by_name(spans, "Reason")
    assert reason.attributes["error.type"] == "EngineError"
    assert reason.attributes["powersampling.tokens_proposed"] > 0
