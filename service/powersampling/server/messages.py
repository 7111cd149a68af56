"""Outgoing messages: the service's values (results, events, settings) as powersampling.v1 protos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from powersampling import __version__
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.api import ReasonResult
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.events import ChainState, SmcChunkFinished, SmcSweepFinished
from powersampling.params import (
    MAX_ALPHA,
    MAX_MCMC_STEPS,
    MAX_PARTICLES,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MAX_SWEEPS,
    SMC_FIELDS,
    Method,
    SamplingParams,
)
from powersampling.results import CacheStatus, SmcStats
from powersampling.sampler.smc import SmcPlan
from powersampling.server.validation import METHODS

METHOD_VALUES = {method: value for value, method in METHODS.items()}
CACHE_STATUSES: dict[CacheStatus, int] = {
    CacheStatus.HIT: pb.CACHE_STATUS_HIT,
    CacheStatus.RESUMED: pb.CACHE_STATUS_RESUMED,
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
    CacheStatus.DISABLED: pb.CACHE_STATUS_DISABLED,
    CacheStatus.UNCACHEABLE: pb.CACHE_STATUS_UNCACHEABLE,
}
FINISH_REASONS = {
    "eos": pb.FINISH_REASON_EOS,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
}


def params_message(
    params: SamplingParams, smc_defaults: Mapping[str, Any] | None = None
) -> pb.SamplingParams:
    """The parameters as sent back; smc's fields with the values in force (for another method: unset,
    or `smc_defaults` where a description shows what an smc request would take)."""
    if params.method is Method.SMC:
        smc = {name: getattr(params, f"effective_{name}") for name in SMC_FIELDS}
    else:
        smc = dict(smc_defaults or {})
    return pb.SamplingParams(
        method=METHOD_VALUES[params.method],  # type: ignore[arg-type]
        alpha=params.alpha,
        proposal_temperature=params.proposal_temperature,
        block_size=params.block_size,
        max_new_tokens=params.max_new_tokens,
        mcmc_steps=params.mcmc_steps,
        token_budget=params.token_budget,
        seed=params.seed,
        stop=params.stop,
        n=params.n,
        **smc,
    )


def smc_chunks_per_sweep(params: SamplingParams) -> int:
    """Most chunks one SMC sweep runs through (as the sampler plans them)."""
    return SmcPlan.from_params(params).chunks_per_sweep


def started_event(
    *,
    request_id: str,
    status: CacheStatus,
    resumed_from_block: int,
    prompt_tokens: int,
    num_blocks: int,
    params: SamplingParams,
    engine: Engine,
) -> pb.ReasonEvent:
    return pb.ReasonEvent(
        started=pb.Started(
            request_id=request_id,
            cache_status=CACHE_STATUSES[status],  # type: ignore[arg-type]
            resumed_from_block=resumed_from_block,
            prompt_tokens=prompt_tokens,
            seed=params.seed,
            num_blocks=num_blocks,
            params=params_message(params),
            temperature=params.temperature,
            model=engine.info.model,
            engine=engine.info.engine,
        )
    )


def progress_event(
    *,
    block_index: int,
    num_blocks: int,
    state: ChainState,
    text: str,
    revised: bool,
    token_budget: int | None,
) -> pb.ReasonEvent:
    steps = state.mcmc_steps
    return pb.ReasonEvent(
        progress=pb.Progress(
            chain_index=state.chain_index,
            block_index=block_index,
            num_blocks=num_blocks,
            text=text,
            revised=revised,
            acceptance_rate=state.acceptance_rate,
            change_rate=state.change_rate,
            mcmc_steps=steps,
            tokens_spent=state.tokens_spent,
            token_budget=token_budget,
            num_tokens=len(state.token_ids),
            finished=state.ended,
        )
    )


def smc_progress_event(
    event: SmcChunkFinished | SmcSweepFinished,
    *,
    params: SamplingParams,
    text: str,
    revised: bool,
) -> pb.ReasonEvent:
    """A Progress of method smc: after a chunk (the leading particle's text) or at the end of a sweep
    (the chain's kept answer). block_index counts chunk slots over all sweeps, like Started.num_blocks."""
    state = event.state
    chunks = smc_chunks_per_sweep(params)
    steps = state.mcmc_steps  # PIMH steps: every sweep after the first
    progress = pb.Progress(
        chain_index=event.chain_index,
        num_blocks=event.num_sweeps * chunks,
        text=text,
        revised=revised,
        acceptance_rate=state.acceptance_rate,
        change_rate=state.change_rate,
        mcmc_steps=steps,
        tokens_spent=state.tokens_spent,
        token_budget=params.token_budget,
        sweep_index=event.sweep_index,
        num_sweeps=event.num_sweeps,
    )
    if isinstance(event, SmcChunkFinished):
        progress.block_index = event.sweep_index * chunks + event.chunk_index
        progress.num_tokens = len(event.leader_token_ids)
        progress.finished = event.particles_alive == 0
        progress.ess = event.ess
        progress.resampled = event.resampled
        progress.unique_ancestors = event.unique_ancestors
        progress.particles_alive = event.particles_alive
    else:
        progress.block_index = (event.sweep_index + 1) * chunks - 1
        progress.num_tokens = len(state.answer_token_ids)
        progress.finished = True
        progress.unique_ancestors = state.unique_ancestors
        progress.log_z_hat = event.log_z_hat
        progress.sweep_finished = True
        progress.sweep_accepted = event.accepted
    return pb.ReasonEvent(progress=progress)


def smc_stats_message(stats: SmcStats) -> pb.SmcStats:
    return pb.SmcStats(
        particles=stats.particles,
        sweeps=stats.sweeps,
        accepted_sweeps=stats.accepted_sweeps,
        resamples=stats.resamples,
        ess_min=stats.ess_min,
        unique_ancestors=stats.unique_ancestors,
        log_z_hat=stats.log_z_hat,
    )


def answer_message(result: ReasonResult) -> pb.Answer:
    return pb.Answer(
        text=result.text,
        token_ids=result.token_ids,
        finish_reason=FINISH_REASONS.get(result.finish_reason, pb.FINISH_REASON_UNSPECIFIED),  # type: ignore[arg-type]
        stats=pb.AnswerStats(
            tokens_spent=result.tokens_spent,
            token_budget=result.token_budget,
            mcmc_steps=result.mcmc_steps,
            accepted=result.accepted_steps,
            changed=result.changed_steps,
            skipped=result.skipped_steps,
            acceptance_rate=result.acceptance_rate,
            change_rate=result.change_rate,
            latency_ms=result.latency_s * 1000.0,
            log_prob=result.log_prob,
            smc=smc_stats_message(result.smc) if result.smc is not None else None,
        ),
        seed=result.seed,
        chain_index=result.chain_index,
    )


def final_event(
    *,
    results: Sequence[ReasonResult],
    status: CacheStatus,
    request_id: str,
    latency_ms: float,
    prompt_tokens: int,
    engine: Engine,
) -> pb.ReasonEvent:
    return pb.ReasonEvent(
        final=pb.Final(
            answers=[answer_message(r) for r in results],
            model=engine.info.model,
            engine=engine.info.engine,
            cache_hit=status is CacheStatus.HIT,
            cache_status=CACHE_STATUSES[status],  # type: ignore[arg-type]
            request_id=request_id,
            latency_ms=latency_ms,
            prompt_tokens=prompt_tokens,
        )
    )


def service_description(
    engine: Engine, config: ServerConfig, *, cache_enabled: bool
) -> pb.ServiceDescription:
    info = engine.info
    return pb.ServiceDescription(
        model=info.model,
        engine=info.engine,
        fingerprint=info.fingerprint,
        device=info.device,
        max_context_tokens=info.max_context_tokens,
        has_chat_template=engine.has_chat_template,
        defaults=params_message(config.default_params(), smc_defaults=config.smc_defaults()),
        limits=pb.ServerLimits(
            max_samples_per_request=config.max_samples_per_request,
            max_prompt_chars=config.max_prompt_chars,
            max_message_bytes=config.max_message_bytes,
            max_stop_strings=MAX_STOP_STRINGS,
            max_stop_length=MAX_STOP_LENGTH,
            max_concurrent_requests=config.max_concurrent_requests,
            max_queue=config.max_queue,
            max_mcmc_steps=MAX_MCMC_STEPS,
            max_alpha=MAX_ALPHA,
            max_new_tokens=config.max_new_tokens_limit,
            max_token_budget=config.max_token_budget,
            max_planned_tokens=config.max_planned_tokens,
            stream_idle_timeout_s=config.stream_idle_timeout_s,
            stream_max_age_s=config.stream_max_age_s or 0.0,
            max_particles=MAX_PARTICLES,
            max_sweeps=MAX_SWEEPS,
        ),
        version=__version__,
        cache_enabled=cache_enabled,
        engine_settings={
            name: str(value) for name, value in config.engine_options().items() if name != "device"
        },
        cache_settings=config.cache_description() if cache_enabled else {},
    )


__all__ = [
    "CACHE_STATUSES",
    "FINISH_REASONS",
    "METHOD_VALUES",
    "answer_message",
    "final_event",
    "params_message",
    "progress_event",
    "service_description",
    "smc_chunks_per_sweep",
    "smc_progress_event",
    "smc_stats_message",
    "started_event",
]
