"""The work shared by the OpenAI endpoints, on the serving core: auth, body, parameters, runs, SSE.

Streaming rule: power sampling revises earlier text (an MH step may rewrite any block), so a stream
never sends text before the answer is final. While the chains work, progress chunks carry no
choices, only statistics in the `powersampling.progress` field; once the answer is final, each
choice's whole text comes in one content chunk, then a chunk with its finish_reason, then (with
`stream_options.include_usage`) the usage chunk, then `data: [DONE]`. So text a client has seen is
never taken back, and joining the deltas gives exactly the non-streamed answer.

Bounds: every call is watched by the serving core's `CallBounds` from its start. One older than
stream_max_age_s ends with a 504 (a stream: with an error event, see `http.streaming`); a stream
whose client has read nothing for stream_idle_timeout_s while the server waits to send is ended,
which stops its work and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from powersampling.api import ReasonResult
from powersampling.cache.base import CachePolicy
from powersampling.engines.base import Engine, Prompt
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished, SmcChunkFinished
from powersampling.http.errors import RequestError, error_response, http_error, validation_error
from powersampling.http.protocol import (
    POWER_FIELDS,
    UNSUPPORTED_PARAMS,
    AnswerStats,
    FinishReason,
    PowerSamplingInfo,
    SamplingFields,
    Usage,
)
from powersampling.http.streaming import BoundedEventStream, sse_data
from powersampling.params import Method, SamplingParams
from powersampling.serving.bounds import CallBounds
from powersampling.serving.core import AccessRecord, ServingCore
from powersampling.serving.errors import Cancelled
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.serving.request import (
    NOT_FOR_SMC,
    Identity,
    RequestLimits,
    ValidRequest,
    check_limits,
    check_smc_fields,
    resolve_tenant,
    smc_options,
)

logger = logging.getLogger("powersampling.http")
Body = TypeVar("Body", bound=BaseModel)
Fields = TypeVar("Fields", bound=SamplingFields)
FINISH_REASONS: dict[str, FinishReason] = {"eos": "stop", "stop": "stop", "length": "length"}
STREAMING = "streaming"  # an access record's status while its stream runs
CLIENT_GONE = "499"  # an access record's status when the client left first (nginx's code)


@dataclasses.dataclass
class Call:
    """One HTTP call on its way through the core."""

    request_id: str
    received: float
    access: AccessRecord
    engine: Engine
    bounds: CallBounds  # stream_max_age_s from the call's start; stream_idle_timeout_s on each send
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


class Renderer(Protocol):
    """An endpoint's rendering of the core's events: its response body, its chunks, its usage chunk."""

    def response(self, finished: CallFinished) -> BaseModel: ...

    def chunks(self, event: CallEvent) -> list[BaseModel]: ...

    def usage_chunk(self, counts: Usage) -> BaseModel: ...


class RendererBase:
    """What every body and chunk of one call carries: its id, creation time, model and fingerprint."""

    id_prefix = "cmpl"
    chunk_type: ClassVar[type[BaseModel]]  # the endpoint's stream chunk

    def __init__(self, call: Call, *, n: int) -> None:
        self.call = call
        self.n = n

    def envelope(self) -> dict[str, Any]:
        info = self.call.engine.info
        return {
            "id": f"{self.id_prefix}-{self.call.request_id}",
            "created": self.call.created,
            "model": info.model,
            "system_fingerprint": info.fingerprint,
        }

    def chunk(self, choices: Sequence[BaseModel], **extra: Any) -> BaseModel:
        return self.chunk_type(**self.envelope(), choices=list(choices), **extra)

    def usage_chunk(self, counts: Usage) -> BaseModel:
        return self.chunk([], usage=counts)


class OpenAIServing(Generic[Fields]):
    """Shared by OpenAIServingChat and OpenAIServingCompletion: `create` serves one POST; an endpoint
    says what its body is (`body_type`) and turns it into the core's request (`prepare`)."""

    body_type: ClassVar[type[SamplingFields]]

    def __init__(self, core: ServingCore, *, max_body_bytes: int) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes

    # --- Before the core: who, what, and is it well-formed ----------------------------------------

    def identify(self, request: Request) -> Identity:
        """The caller (Unauthenticated without a valid bearer token, when auth is on)."""
        header = request.headers.get("authorization")
        return self.core.identify([("authorization", header)] if header is not None else [])

    async def read_body(self, request: Request, model: type[Body]) -> Body:
        """The JSON body parsed as `model`; RequestError naming what is wrong (size, JSON, a field)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
        if not data:
            raise RequestError(400, "the body is empty; send a JSON object", "body", "invalid_json")
        try:
            return model.model_validate_json(bytes(data))
        except ValidationError as exc:
            raise validation_error(exc) from None

    def check_model(self, requested: str | None, engine: Engine) -> None:
        if requested is not None and requested != engine.info.model:
            raise RequestError(
                404,
                f"model: this server serves {engine.info.model!r}, not {requested!r}",
                "model",
                "model_not_found",
            )

    def sampling_params(
        self, body: SamplingFields, max_tokens: tuple[str, int | None], defaults: SamplingParams
    ) -> SamplingParams:
        """SamplingParams from the body, checked by the same rules as gRPC's; errors name the body's field."""
        for name in UNSUPPORTED_PARAMS:
            if getattr(body, name) is not None:
                raise RequestError(
                    400,
                    f"{name}: not supported by this server (power sampling: see method, alpha, "
                    "proposal_temperature and the other extra fields)",
                    name,
                    "unsupported_parameter",
                )
        method = defaults.method
        if body.method is not None:
            try:
                method = Method(body.method)
            except ValueError:
                known = ", ".join(m.value for m in Method)
                raise InvalidArgument(
                    "method", f"unknown method {body.method!r}; use one of {known}"
                ) from None
        given = {
            name: getattr(body, name)
            for name in (*POWER_FIELDS, "seed", "n")
            if getattr(body, name) is not None
        }
        check_smc_fields(method, [name for name in NOT_FOR_SMC if name in given])
        options: dict[str, Any] = {
            **smc_options(method, defaults, self.core.config.smc_defaults()),
            **given,
            "method": method,
        }
        max_tokens_field, max_tokens_value = max_tokens
        if max_tokens_value is not None:
            options["max_new_tokens"] = max_tokens_value
        if body.stop is not None:
            options["stop"] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
        try:
            return dataclasses.replace(defaults, **options)
        except InvalidArgument as exc:
            raise _renamed(exc, max_tokens_field) from None

    def valid_request(
        self,
        *,
        body: SamplingFields,
        prompt: Prompt,
        prompt_field: str,
        chat: bool,
        params: SamplingParams,
        limits: RequestLimits,
        identity: Identity,
        max_tokens_field: str,
        tools: tuple[dict[str, Any], ...] = (),
    ) -> ValidRequest:
        try:
            check_limits(params, limits)
        except InvalidArgument as exc:
            raise _renamed(exc, max_tokens_field) from None
        return ValidRequest(
            prompt=prompt,
            params=params,
            chat=chat,
            cache_policy=CachePolicy(body.cache_policy or "use"),
            tenant=resolve_tenant(body.tenant or "", identity.tenant),
            tools=tools,
            prompt_field=prompt_field,
        )

    def prepare(
        self, body: Fields, call: Call, limits: RequestLimits, identity: Identity
    ) -> tuple[ValidRequest, Renderer]:
        """The endpoint's request for the core from its checked body, and its renderer."""
        raise NotImplementedError

    # --- Through the core -------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """Serve one POST: identify the caller, read and check its body, run it on the core; every
        outcome gets one access line."""
        identity = self.identify(request)
        call, limits = self.start()
        try:
            body = cast(Fields, await self.read_body(request, self.body_type))
            self.check_model(body.model, call.engine)
            valid, renderer = self.prepare(body, call, limits, identity)
            return await self.respond(request, call, valid, body, renderer)
        except asyncio.CancelledError:
            expired = call.bounds.expired
            task = asyncio.current_task()
            if expired is None or task is None:
                raise  # the client went away, or the server stops
            task.uncancel()  # the call ran past stream_max_age_s: answer with its error
            error = http_error(expired, call.request_id)
            call.access.status = str(error.status)
            return error_response(error, call.request_id)
        except Exception as exc:
            error = http_error(exc, call.request_id)
            call.access.status = str(error.status)
            return error_response(error, call.request_id)
        finally:
            if call.access.status == STREAMING:  # the stream's own task now carries the call
                call.bounds.follow(None)
            else:  # a stream writes its line when it ends
                call.bounds.close()
                call.access.log()

    def start(self) -> tuple[Call, RequestLimits]:
        """A new call's ids and the engine's limits (ServiceUnavailable while loading)."""
        received = time.perf_counter()
        request_id = uuid.uuid4().hex
        engine, limits = self.core.ready_engine()
        access = AccessRecord(request_id, received, "http")
        return Call(request_id, received, access, engine, CallBounds(self.core.config, request_id)), limits

    async def respond(
        self, request: Request, call: Call, valid: ValidRequest, body: SamplingFields, renderer: Renderer
    ) -> Response:
        """Run `valid` on the core: one JSON response, or an SSE stream (see the module's streaming rule).

        Errors up to the first event (admission, the prompt's encoding) become an HTTP status; later
        ones an error event in the stream.
        """
        events = self.core.reason(
            valid, request_id=call.request_id, received=call.received, access=call.access
        )
        if not body.stream:
            finished = await _until_finished(request, events)
            call.access.status = "200"
            return JSONResponse(
                renderer.response(finished).model_dump(mode="json", exclude_none=False), headers=_ids(call)
            )
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        call.access.status = STREAMING
        with_usage = body.stream_options is not None and body.stream_options.include_usage
        return BoundedEventStream(
            self._sse(call, first, events, renderer, with_usage),
            bounds=call.bounds,
            error_event=lambda error: sse_data(http_error(error, call.request_id).body),
            headers={**_ids(call), "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _sse(
        self,
        call: Call,
        first: CallEvent,
        events: AsyncGenerator[CallEvent, None],
        renderer: Renderer,
        with_usage: bool,
    ) -> AsyncGenerator[str, None]:
        # A client that disconnects cancels this generator's task (Starlette), and an expired call
        # (CallBounds) cancels it or closes it: aclosing then closes the core's generator at once,
        # which cancels the sampling and its engine requests and frees the slot.
        try:
            async with contextlib.aclosing(events):
                event: CallEvent | None = first
                while event is not None:
                    for chunk in renderer.chunks(event):
                        yield sse_data(chunk)
                    if isinstance(event, CallFinished):
                        if with_usage:
                            yield sse_data(renderer.usage_chunk(usage(event)))
                        break
                    event = await anext(events, None)
            yield "data: [DONE]\n\n"
            call.access.status = "200"
        except Exception as exc:
            error = http_error(exc, call.request_id)
            call.access.status = str(error.status)
            yield sse_data(error.body)
        finally:
            if call.access.status == STREAMING:  # ended early: by its bounds, or the client left
                expired = call.bounds.expired
                call.access.status = (
                    str(http_error(expired, call.request_id).status) if expired is not None else CLIENT_GONE
                )
            call.access.log()


def usage(finished: CallFinished) -> Usage:
    completion = sum(len(r.token_ids) for r in finished.results)
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=completion,
        total_tokens=finished.prompt_tokens + completion,
    )


def info_started(event: CallStarted) -> PowerSamplingInfo:
    return PowerSamplingInfo(
        request_id=event.request_id, cache_status=event.cache_status.value, params=event.params.to_dict()
    )


def info_progress(call_id: str, event: CallProgress) -> PowerSamplingInfo:
    """Statistics of one progress event (no text: it may still be revised)."""
    sampler_event = event.event
    state = sampler_event.state
    progress: dict[str, Any] = {
        "index": sampler_event.chain_index,
        "tokens_spent": state.tokens_spent,
        "token_budget": event.params.token_budget,
        "revised": event.revised,
    }
    if isinstance(sampler_event, BlockFinished):
        steps = sampler_event.state.mcmc_steps
        progress.update(
            block_index=sampler_event.block_index,
            num_blocks=sampler_event.num_blocks,
            num_tokens=len(sampler_event.state.token_ids),
            mcmc_steps=steps,
            acceptance_rate=sampler_event.state.accepted_steps / steps if steps else 0.0,
        )
    else:  # Power-SMC: a chunk of a sweep, or a sweep's end
        progress.update(sweep_index=sampler_event.sweep_index, num_sweeps=sampler_event.num_sweeps)
        if isinstance(sampler_event, SmcChunkFinished):
            progress.update(
                chunk_index=sampler_event.chunk_index,
                ess=sampler_event.ess,
                resampled=sampler_event.resampled,
                particles_alive=sampler_event.particles_alive,
            )
        else:
            progress.update(sweep_finished=True, sweep_accepted=sampler_event.accepted)
    return PowerSamplingInfo(request_id=call_id, progress=progress)


def info_finished(event: CallFinished) -> PowerSamplingInfo:
    return PowerSamplingInfo(
        request_id=event.request_id,
        cache_status=event.cache_status.value,
        answers=[answer_stats(i, r) for i, r in enumerate(event.results)],
    )


def answer_stats(index: int, result: ReasonResult) -> AnswerStats:
    return AnswerStats(
        index=index,
        seed=result.seed,
        tokens_spent=result.tokens_spent,
        mcmc_steps=result.mcmc_steps,
        accepted_steps=result.accepted_steps,
        acceptance_rate=result.acceptance_rate,
        log_prob=result.log_prob,
        finish_reason=result.finish_reason,
    )


async def _until_finished(request: Request, events: AsyncGenerator[CallEvent, None]) -> CallFinished:
    """The final event; a client that disconnects first ends the run (its work is cancelled)."""

    async def collect() -> CallFinished:
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, CallFinished):
                    return event
        raise AssertionError("the core ended a call without its final event")  # pragma: no cover

    task = asyncio.ensure_future(collect())
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise Cancelled("the client disconnected; the request's work was stopped")
    return task.result()  # raises what the run raised


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _ids(call: Call) -> dict[str, str]:
    return {"x-request-id": call.request_id}


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413, f"body: larger than the server's limit of {limit} bytes", "body", "body_too_large"
    )


def _renamed(exc: InvalidArgument, max_tokens_field: str) -> InvalidArgument:
    """The error under the body's name for max_new_tokens (max_tokens or max_completion_tokens)."""
    if exc.field == "max_new_tokens":
        return InvalidArgument(max_tokens_field, exc.message)
    return exc


__all__ = ["Call", "OpenAIServing", "Renderer", "RendererBase", "usage"]
