"""The one public entry point: `reason` (and `reason_async`), used by the CLI, the server and benchmarks."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from powersampling.engines.base import Engine, Prompt
from powersampling.errors import InvalidArgument
from powersampling.events import Checkpoint, EventSink
from powersampling.params import Method, SamplingParams
from powersampling.results import ReasonResult, SmcStats
from powersampling.sampler import make_sampler


def make_params(params: SamplingParams | None = None, **options: Any) -> SamplingParams:
    """SamplingParams from keyword options (CLI and API names alike), validated, with a seed."""
    if params is not None and options:
        raise InvalidArgument("params", "pass either params or keyword options, not both")
    if params is None:
        if "budget" in options:
            options["token_budget"] = options.pop("budget")
        if "temperature" in options:
            options["proposal_temperature"] = options.pop("temperature")
        unknown = set(options) - set(SamplingParams.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(sorted(unknown)[0], "unknown option")
        params = SamplingParams(**options)
    if params.seed is None:
        params = params.with_seed(secrets.randbits(63))
    return params


def encode_and_check(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    chat: bool | None,
    *,
    tools: Sequence[Mapping[str, Any]] = (),
) -> list[int]:
    """Prompt token ids, checked against the model's context (`tools`: see Engine.encode_prompt)."""
    prompt_ids = engine.encode_prompt(prompt, chat=chat, tools=tools)
    context = engine.info.max_context_tokens
    if len(prompt_ids) >= context:
        raise InvalidArgument(
            "prompt", f"{len(prompt_ids)} tokens do not fit the model's context of {context} tokens"
        )
    if len(prompt_ids) + params.max_new_tokens > context:
        raise InvalidArgument(
            "max_new_tokens",
            f"{params.max_new_tokens} new tokens after a {len(prompt_ids)}-token prompt exceed the "
            f"model's context of {context} tokens (at most {context - len(prompt_ids)} fit)",
        )
    return prompt_ids


async def reason_async(
    prompt: Prompt,
    engine: Engine,
    params: SamplingParams | None = None,
    *,
    chat: bool | None = None,
    on_event: EventSink | None = None,
    resume: Mapping[int, Checkpoint] | None = None,
    **options: Any,
) -> list[ReasonResult]:
    """Answer `prompt` with `n` samples (options as in SamplingParams; `budget` = `token_budget`).

    `prompt` is text, chat messages ({"role", "content"} dicts) or token ids. Text goes through the
    model's chat template when it has one (chat=False sends it raw). `on_event` receives every sampler
    event; `resume` continues chains from checkpoints (as carried by BlockFinished events for MH and
    SmcChunkFinished / SmcSweepFinished events for smc).
    """
    started = time.perf_counter()
    params = make_params(params, **options)
    prompt_ids = encode_and_check(engine, prompt, params, chat)
    return await reason_ids(engine, prompt_ids, params, on_event=on_event, resume=resume, started=started)


async def reason_ids(
    engine: Engine,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    on_event: EventSink | None = None,
    resume: Mapping[int, Checkpoint] | None = None,
    started: float | None = None,
) -> list[ReasonResult]:
    """`reason_async` below the text level: `prompt_ids` already encoded and checked against the
    context (`encode_and_check`), `params` already validated and seeded (`make_params`).

    The server calls this once it has checked a request, so nothing is encoded or validated twice.
    `started` (a `time.perf_counter()` reading) is when the request's latency starts; default now.
    """
    if started is None:
        started = time.perf_counter()
    if params.seed is None:
        raise InvalidArgument("seed", "reason_ids takes seeded params (see make_params)")
    prompt_ids = list(prompt_ids)
    sampler = make_sampler(engine, prompt_ids, params, on_event=on_event)
    states = await sampler.run(resume=resume)
    latency_s = time.perf_counter() - started
    info = engine.info
    assert params.seed is not None
    resume = resume or {}
    results = []
    for state in states:
        o = sampler.outcome(state)
        results.append(
            ReasonResult(
                text=o.text,
                token_ids=list(o.token_ids),
                finish_reason=o.finish_reason,
                tokens_spent=o.tokens_spent,
                token_budget=params.token_budget,
                mcmc_steps=o.mcmc_steps,
                accepted_steps=o.accepted_steps,
                changed_steps=o.changed_steps,
                skipped_steps=o.skipped_steps,
                acceptance_rate=o.acceptance_rate,
                change_rate=o.change_rate,
                log_prob=o.log_prob,
                latency_s=latency_s,
                model=info.model,
                engine=info.engine,
                method=params.method.value,
                alpha=params.alpha,
                proposal_temperature=params.temperature,
                seed=params.seed,
                chain_index=o.chain_index,
                prompt_tokens=len(prompt_ids),
                resumed_from_block=sampler.resume_position(resume[o.chain_index])
                if o.chain_index in resume
                else 0,
                smc=o.smc,
            )
        )
    return results


def reason(
    prompt: Prompt,
    engine: Engine,
    params: SamplingParams | None = None,
    *,
    chat: bool | None = None,
    on_event: EventSink | None = None,
    **options: Any,
) -> list[ReasonResult]:
    """Synchronous `reason_async`: one list entry per sample (n of them, default 1)."""
    return asyncio.run(reason_async(prompt, engine, params, chat=chat, on_event=on_event, **options))


__all__ = [
    "Method",
    "ReasonResult",
    "SamplingParams",
    "SmcStats",
    "encode_and_check",
    "make_params",
    "reason",
    "reason_async",
    "reason_ids",
]
