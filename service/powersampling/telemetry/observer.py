"""One Reason request followed through OpenTelemetry: the sampler's events become spans (request,
sampling, one per block or sweep) and, at the end, the request's metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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
from powersampling.results import CacheStatus, ReasonResult, StepRates, rate
from powersampling.telemetry.instruments import Instruments

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


class OtelRequestObserver:
    """Turns one request's sampler events into spans and, at the end, metrics."""

    def __init__(
        self,
        *,
        tracer: trace.Tracer,
        instruments: Instruments,
        tracing: bool,
        step_events: bool,
        request_id: str,
        params: SamplingParams,
        model: str,
        engine: str,
        prompt_tokens: int,
        tenant: str,
    ) -> None:
        self._tracer = tracer
        self._m = instruments
        self._started = time.perf_counter()
        self._params = params
        self._model = model
        self._tracing = tracing
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
        self._step_events = step_events
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
        self._span = tracer.start_span(REQUEST_SPAN, kind=kind, attributes=attributes)
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
        self._m.time_to_first_event.record(self._first_event_s, self._metric_attrs, self._exemplar_ctx())
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
                "powersampling.acceptance_rate": rate(block.accepted, block.steps),
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
            sweep.span = self._tracer.start_span(
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
        self._sampling = self._tracer.start_span(
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
            block.span = self._tracer.start_span(
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
            "powersampling.steps_taken": summary.mcmc_steps,
            "powersampling.steps_accepted": summary.accepted_steps,
            "powersampling.steps_changed": summary.changed_steps,
            "powersampling.steps_skipped": summary.skipped_steps,
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
        t = self._m
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
        if error is None and summary.mcmc_steps:
            t.acceptance_rate.record(summary.acceptance_rate, base, ctx)
        if error is None and summary.budget_utilisation is not None:
            t.budget_utilisation.record(summary.budget_utilisation, base, ctx)


@dataclass(frozen=True, slots=True)
class _Summary(StepRates):
    mcmc_steps: int
    accepted_steps: int
    changed_steps: int
    skipped_steps: int
    tokens_proposed: int
    tokens_kept: int | None
    budget_utilisation: float | None


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


__all__ = ["OtelRequestObserver"]
