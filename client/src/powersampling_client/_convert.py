"""Between the client's values and the generated protobuf messages (shared by the sync and async clients)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypedDict, Unpack

import grpc

from powersampling_client._proto.v1 import reasoning_pb2 as pb
from powersampling_client.types import (
    Answer,
    AnswerStats,
    CachePolicy,
    CacheStatus,
    ChatMessage,
    FinishReason,
    Method,
    PowerSamplingError,
    Progress,
    ReasonEvent,
    ReasonResult,
    SamplingParams,
    ServerLimits,
    ServiceInfo,
    SmcProgress,
    SmcStats,
    Started,
)

Prompt = str | Sequence[ChatMessage] | Sequence[int]

METHODS: dict[str, int] = {
    "power": pb.METHOD_POWER,
    "smc": pb.METHOD_SMC,
    "sample": pb.METHOD_SAMPLE,
    "low-temp": pb.METHOD_LOW_TEMP,
    "greedy": pb.METHOD_GREEDY,
}
_METHOD_NAMES = {value: name for name, value in METHODS.items()}
CACHE_POLICIES: dict[str, int] = {
    "use": pb.CACHE_POLICY_USE,
    "bypass": pb.CACHE_POLICY_BYPASS,
    "refresh": pb.CACHE_POLICY_REFRESH,
}
_CACHE_STATUSES: dict[int, CacheStatus] = {
    pb.CACHE_STATUS_HIT: "hit",
    pb.CACHE_STATUS_RESUMED: "resumed",
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_BYPASS: "bypass",
    pb.CACHE_STATUS_DISABLED: "disabled",
    pb.CACHE_STATUS_UNCACHEABLE: "uncacheable",
}
_FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_EOS: "eos",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
}


# Method "smc"'s options (proto3 optional fields of the request and of SamplingParams).
_SMC_FIELDS = ("particles", "sweeps", "resample_threshold", "chunk_size", "ramp_tokens")
# Options that map onto a proto3 optional field of the same name.
_OPTIONAL_FIELDS = (
    "alpha",
    "proposal_temperature",
    "block_size",
    "max_new_tokens",
    "mcmc_steps",
    "token_budget",
    "seed",
    "n",
    "chat",
    *_SMC_FIELDS,
)


def _invalid(field: str, message: str) -> PowerSamplingError:
    return PowerSamplingError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


class ReasonOptions(TypedDict, total=False):
    """Options of one request; an unset (or None) option takes the server's default."""

    method: (
        Method | None
    )  # "power" (MCMC over p^alpha), "smc" (Power-SMC) or a baseline: "sample", "low-temp", "greedy"
    alpha: float | None  # power of the target p(x)^alpha, at least 1
    proposal_temperature: float | None  # default 1/alpha
    block_size: int | None  # tokens per block
    max_new_tokens: int | None
    mcmc_steps: int | None  # MCMC steps per block
    token_budget: int | None  # cap on proposal tokens per chain, at least max_new_tokens
    seed: int | None  # same seed, same answer; unset: the server draws one (see Answer.seed)
    stop: Iterable[str]  # strings that end an answer
    n: int | None  # independent samples
    particles: int | None  # smc: particles per sweep
    sweeps: int | None  # smc: 1 is plain SMC; more run particle independent MH (exact)
    resample_threshold: float | None  # smc: resample when ESS < threshold x particles, in (0, 1]
    chunk_size: int | None  # smc: tokens between ESS checks
    ramp_tokens: int | None  # smc: tokens over which alpha ramps up from 1 (0: none)
    cache: CachePolicy | None  # "use" (default), "bypass" or "refresh"
    chat: bool | None  # apply the model's chat template to a text prompt (default: when it has one)
    tenant: str | None  # cache namespace


def build_request(prompt: Prompt, **options: Unpack[ReasonOptions]) -> pb.ReasonRequest:
    """A ReasonRequest; None leaves a field unset (the server's default applies)."""
    unknown = set(options) - set(ReasonOptions.__annotations__)
    if unknown:
        raise _invalid(sorted(unknown)[0], "unknown option")
    request = pb.ReasonRequest()
    if isinstance(prompt, str):
        request.text = prompt
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) for t in prompt):
        request.token_ids.ids.extend(prompt)  # type: ignore[arg-type]
    elif isinstance(prompt, Sequence):
        messages = request.messages.messages
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                raise _invalid(f"messages[{i}]", "each message is a mapping with 'role' and 'content'")
            messages.add(role=str(message.get("role", "")), content=str(message.get("content", "")))
        request.messages.SetInParent()  # an empty list still says "messages" (the server names it)
    else:
        raise _invalid("prompt", f"expected text, chat messages or token ids, got {type(prompt).__name__}")
    method = options.get("method")
    if method is not None:
        if method not in METHODS:
            raise _invalid("method", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        request.method = METHODS[method]  # type: ignore[assignment]
    cache = options.get("cache")
    if cache is not None:
        if cache not in CACHE_POLICIES:
            raise _invalid(
                "cache_policy", f"unknown policy {cache!r}; use one of {', '.join(CACHE_POLICIES)}"
            )
        request.cache_policy = CACHE_POLICIES[cache]  # type: ignore[assignment]
    for name in _OPTIONAL_FIELDS:
        value = options.get(name)
        if value is None:
            continue
        try:
            setattr(request, name, value)
        except (TypeError, ValueError) as exc:  # wrong type, or out of the field's range (e.g. negative)
            raise _invalid(name, f"invalid value {value!r} ({exc})") from None
    stop = options.get("stop") or ()
    request.stop.extend([stop] if isinstance(stop, str) else stop)
    tenant = options.get("tenant")
    if tenant:
        request.tenant = tenant
    return request


def params_from_proto(m: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        method=_METHOD_NAMES.get(m.method, "power"),  # type: ignore[arg-type]
        alpha=m.alpha,
        proposal_temperature=m.proposal_temperature if m.HasField("proposal_temperature") else None,
        block_size=m.block_size,
        max_new_tokens=m.max_new_tokens,
        mcmc_steps=m.mcmc_steps,
        token_budget=m.token_budget if m.HasField("token_budget") else None,
        seed=m.seed if m.HasField("seed") else None,
        stop=tuple(m.stop),
        n=m.n,
        **{name: getattr(m, name) if m.HasField(name) else None for name in _SMC_FIELDS},  # type: ignore[arg-type]
    )


def event_from_proto(message: pb.ReasonEvent) -> ReasonEvent:
    kind = message.WhichOneof("event")
    if kind == "started":
        s = message.started
        return Started(
            request_id=s.request_id,
            cache_status=_CACHE_STATUSES.get(s.cache_status, "unspecified"),
            resumed_from_block=s.resumed_from_block,
            prompt_tokens=s.prompt_tokens,
            seed=s.seed if s.HasField("seed") else None,
            num_blocks=s.num_blocks,
            params=params_from_proto(s.params),
            temperature=s.temperature,
            model=s.model,
            engine=s.engine,
        )
    if kind == "progress":
        p = message.progress
        return Progress(
            chain_index=p.chain_index,
            block_index=p.block_index,
            num_blocks=p.num_blocks,
            text=p.text,
            revised=p.revised,
            acceptance_rate=p.acceptance_rate,
            change_rate=p.change_rate,
            mcmc_steps=p.mcmc_steps,
            tokens_spent=p.tokens_spent,
            token_budget=p.token_budget if p.HasField("token_budget") else None,
            num_tokens=p.num_tokens,
            finished=p.finished,
            smc=_smc_progress(p) if p.num_sweeps else None,
        )
    if kind == "final":
        return result_from_proto(message.final)
    raise PowerSamplingError(grpc.StatusCode.UNIMPLEMENTED, f"unknown event {kind!r}; upgrade the client")


def _smc_progress(p: pb.Progress) -> SmcProgress:
    return SmcProgress(
        sweep_index=p.sweep_index,
        num_sweeps=p.num_sweeps,
        ess=p.ess,
        resampled=p.resampled,
        unique_ancestors=p.unique_ancestors,
        particles_alive=p.particles_alive,
        sweep_finished=p.sweep_finished,
        sweep_accepted=p.sweep_accepted,
        log_z_hat=p.log_z_hat if p.HasField("log_z_hat") else None,
    )


def _smc_stats(s: pb.SmcStats) -> SmcStats:
    return SmcStats(
        particles=s.particles,
        sweeps=s.sweeps,
        accepted_sweeps=s.accepted_sweeps,
        resamples=s.resamples,
        ess_min=s.ess_min,
        unique_ancestors=s.unique_ancestors,
        log_z_hat=s.log_z_hat,
    )


def result_from_proto(f: pb.Final) -> ReasonResult:
    return ReasonResult(
        answers=tuple(
            Answer(
                text=a.text,
                token_ids=tuple(a.token_ids),
                finish_reason=_FINISH_REASONS.get(a.finish_reason, "unspecified"),
                stats=AnswerStats(
                    tokens_spent=a.stats.tokens_spent,
                    token_budget=a.stats.token_budget if a.stats.HasField("token_budget") else None,
                    mcmc_steps=a.stats.mcmc_steps,
                    accepted=a.stats.accepted,
                    changed=a.stats.changed,
                    skipped=a.stats.skipped,
                    acceptance_rate=a.stats.acceptance_rate,
                    change_rate=a.stats.change_rate,
                    latency_ms=a.stats.latency_ms,
                    log_prob=a.stats.log_prob,
                    smc=_smc_stats(a.stats.smc) if a.stats.HasField("smc") else None,
                ),
                seed=a.seed,
                chain_index=a.chain_index,
            )
            for a in f.answers
        ),
        model=f.model,
        engine=f.engine,
        cache_hit=f.cache_hit,
        cache_status=_CACHE_STATUSES.get(f.cache_status, "unspecified"),
        request_id=f.request_id,
        latency_ms=f.latency_ms,
        prompt_tokens=f.prompt_tokens,
    )


def service_info_from_proto(d: pb.ServiceDescription) -> ServiceInfo:
    lim = d.limits
    return ServiceInfo(
        model=d.model,
        engine=d.engine,
        fingerprint=d.fingerprint,
        device=d.device,
        max_context_tokens=d.max_context_tokens,
        has_chat_template=d.has_chat_template,
        defaults=params_from_proto(d.defaults),
        limits=ServerLimits(
            max_samples_per_request=lim.max_samples_per_request,
            max_prompt_chars=lim.max_prompt_chars,
            max_message_bytes=lim.max_message_bytes,
            max_stop_strings=lim.max_stop_strings,
            max_stop_length=lim.max_stop_length,
            max_concurrent_requests=lim.max_concurrent_requests,
            max_queue=lim.max_queue,
            max_mcmc_steps=lim.max_mcmc_steps,
            max_alpha=lim.max_alpha,
            max_particles=lim.max_particles,
            max_sweeps=lim.max_sweeps,
            max_new_tokens=lim.max_new_tokens,
            max_token_budget=lim.max_token_budget,
            max_planned_tokens=lim.max_planned_tokens,
            stream_idle_timeout_s=lim.stream_idle_timeout_s,
            stream_max_age_s=lim.stream_max_age_s,
        ),
        version=d.version,
        cache_enabled=d.cache_enabled,
        engine_settings=dict(d.engine_settings),
        cache_settings=dict(d.cache_settings),
    )


def error_from_rpc(exc: grpc.RpcError) -> PowerSamplingError:
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return PowerSamplingError(code or grpc.StatusCode.UNKNOWN, details or "")


def no_final_error() -> PowerSamplingError:
    return PowerSamplingError(grpc.StatusCode.UNKNOWN, "the stream ended without a final answer")
