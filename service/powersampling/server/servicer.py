"""The ReasoningService handlers: validate → admit → `reason_cached` → stream.

The sampler reports through plain callbacks; a small buffer carries its events to the stream, so the
sampling task and the stream's writes run side by side on the event loop. When the call ends early
(client cancel, deadline, shutdown past the drain timeout) the sampling task is cancelled, which
cancels its pending engine requests: the engine drops them instead of generating for nobody.

A client that stops reading blocks the stream's writes once gRPC's flow-control window is full; a
stream blocked that way for `stream_idle_timeout_s` (or older than `stream_max_age_s`) is ended by
`_StreamGuard`: its status is queued for the client and the call's task is cancelled, which stops
the sampling and frees the slot at once, whether or not the client ever reads again. Messages are
written with `context.write` for that reason (see Reason).

Every Reason call ends with one access line at INFO on the "powersampling.access" logger: request id,
tenant hash, method, status code, latency, tokens spent and cache status; never the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc

from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.api import ReasonResult, encode_and_check
from powersampling.cache.base import CacheStatus, ChainCache
from powersampling.cache.cached_reason import reason_cached
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished, SamplerEvent, SmcChunkFinished, SmcSweepFinished
from powersampling.sampler import BudgetPlan
from powersampling.sampler.stops import StopMatcher
from powersampling.server.admission import AdmissionControl
from powersampling.server.auth import Authenticator
from powersampling.server.errors import ResponseTooLarge, ServiceUnavailable, abort_with_status, status_for
from powersampling.server.limits import WorkLimits
from powersampling.server.messages import (
    final_event,
    num_blocks,
    progress_event,
    service_description,
    smc_progress_event,
    started_event,
)
from powersampling.server.validation import (
    MalformedRequest,
    RequestLimits,
    ValidRequest,
    validate_reason_request,
)
from powersampling.telemetry.base import NoTelemetry, RequestObserver, Telemetry

logger = logging.getLogger("powersampling.server")
access_logger = logging.getLogger("powersampling.access")

# Progress events waiting for a slow reader beyond this many are coalesced per chain (each chain's
# latest text replaces its older unsent one), so a slow client costs bounded memory.
MAX_PENDING_EVENTS = 64
# Sampler events that become Progress messages (MH blocks; SMC chunks and sweeps).
_PROGRESS_EVENTS = (BlockFinished, SmcChunkFinished, SmcSweepFinished)
_ProgressEvent = BlockFinished | SmcChunkFinished | SmcSweepFinished


class ReasoningServicer:
    """Implements powersampling.v1.ReasoningService on an engine that may still be loading."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        cache: ChainCache | None,
        telemetry: Telemetry,
        authenticator: Authenticator,
    ) -> None:
        self.config = config
        self.cache = cache
        self.telemetry = telemetry
        self.authenticator = authenticator
        self.defaults = config.default_params()
        self.admission = AdmissionControl(
            config.max_concurrent_requests,
            config.max_queue,
            on_queue_depth=telemetry.set_queue_depth,
            on_rejection=telemetry.record_rejection,
        )
        self._engine: Engine | None = None
        self._limits: RequestLimits | None = None

    def attach_engine(self, engine: Engine) -> None:
        """Start serving requests on `engine` (once it reports ready)."""
        self._engine = engine
        self._limits = RequestLimits(
            max_samples_per_request=self.config.max_samples_per_request,
            max_prompt_chars=self.config.max_prompt_chars,
            max_context_tokens=engine.info.max_context_tokens,
            work=WorkLimits.from_config(self.config),
        )

    def _ready_engine(self) -> tuple[Engine, RequestLimits]:
        if self._engine is None or self._limits is None or not self._engine.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly")
        return self._engine, self._limits

    async def Describe(
        self, request: pb.DescribeRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServiceDescription:
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidArgument(request.field, request.message)
            engine, _ = self._ready_engine()
            return service_description(engine, self.config, cache_enabled=self.cache is not None)
        except Exception as exc:
            await abort_with_status(context, exc)

    async def Reason(
        self, request: pb.ReasonRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReasonEvent]:
        received = time.perf_counter()
        request_id = uuid.uuid4().hex
        access = _AccessRecord(request_id, received)
        guard = _StreamGuard(self.config, context, request_id)
        try:
            engine, limits = self._ready_engine()
            identity = self.authenticator.identify(context.invocation_metadata())
            valid = validate_reason_request(
                request,
                self.defaults,
                limits,
                bound_tenant=identity.tenant if identity else None,
                smc_defaults=self.config.smc_defaults(),
            )
            access.tenant, access.method = valid.tenant, valid.params.method.value
            async with self.admission.slot():
                # Tokenizing a long prompt is real CPU work: keep it off the event loop.
                prompt_ids = await asyncio.to_thread(_encode, engine, valid, request)
                run = _ReasonRun(self, engine, valid, prompt_ids, request_id, received)
                access.run = run
                # aclosing: if the call ends while suspended here, the run's clean-up still happens now.
                async with contextlib.aclosing(run.stream()) as messages:
                    async for message in messages:
                        size = message.ByteSize()
                        if size > self.config.max_message_bytes:
                            raise ResponseTooLarge(
                                f"the answer needs a {size}-byte message, over the server's "
                                f"max_message_bytes of {self.config.max_message_bytes}; ask for fewer "
                                "tokens or samples"
                            )
                        with guard.sending():
                            # Written here rather than yielded: a write that a client blocks is then
                            # awaited inside this generator, so ending it unwinds the interceptors'
                            # generators in this task (not later, in another, when collected).
                            await context.write(message)
            access.status = "OK"
        except Exception as exc:
            code, details = status_for(exc, request_id)
            access.status = code.name
            await context.abort(code, details)
        finally:
            guard.close()
            if guard.expired is not None:
                access.status = guard.expired.name
            access.log()
        if False:  # pragma: no cover
            yield  # a streaming handler is an async generator (the telemetry interceptor iterates it)


def _encode(engine: Engine, valid: ValidRequest, request: pb.ReasonRequest | MalformedRequest) -> list[int]:
    """The prompt's token ids; errors name the request's prompt field (text, messages, token_ids)."""
    try:
        return encode_and_check(engine, valid.prompt, valid.params, valid.chat)
    except InvalidArgument as exc:
        kind = request.WhichOneof("prompt") if isinstance(request, pb.ReasonRequest) else None
        if kind is None or exc.field != "prompt":
            raise
        raise InvalidArgument(kind, exc.message) from None


class _StreamGuard:
    """Ends a stream whose client stopped reading (or that ran too long), freeing its slot.

    `sending()` wraps each write: a write still blocked after `stream_idle_timeout_s` means the
    client has read nothing for that long (gRPC's flow-control window is full). The guard then
    queues the status for the client in its own task (it goes out after the unread data) and
    cancels the call's task, which closes the Reason generator: the sampling is cancelled and the
    slot released now, not when (if ever) the client reads again.
    """

    def __init__(self, config: ServerConfig, context: grpc.aio.ServicerContext, request_id: str) -> None:
        self._config = config
        self._context = context
        self._request_id = request_id
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._idle: asyncio.TimerHandle | None = None
        self._age: asyncio.TimerHandle | None = None
        self._abort: asyncio.Task[None] | None = None
        self.expired: grpc.StatusCode | None = None
        if config.stream_max_age_s is not None:
            self._age = self._loop.call_later(
                config.stream_max_age_s,
                self._expire,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream: the call ran longer than the server's stream_max_age_s of "
                f"{config.stream_max_age_s:g} s (request {request_id})",
            )

    @contextlib.contextmanager
    def sending(self) -> Any:
        timeout = self._config.stream_idle_timeout_s
        self._idle = self._loop.call_later(
            timeout,
            self._expire,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"stream: the client read nothing for {timeout:g} s (the server's stream_idle_timeout_s); "
            f"the call was ended to free its slot (request {self._request_id})",
        )
        try:
            yield
        finally:
            self._idle.cancel()
            self._idle = None

    def _expire(self, code: grpc.StatusCode, message: str) -> None:
        if self.expired is not None or self._task is None or self._task.done():
            return
        self.expired = code
        logger.warning("%s", message)
        self._abort = self._loop.create_task(self._send_status(code, message))
        self._task.cancel()

    async def _send_status(self, code: grpc.StatusCode, message: str) -> None:
        # Completes when the client reads past its unread data, or when the connection goes.
        with contextlib.suppress(Exception):
            await self._context.abort(code, message)

    def close(self) -> None:
        for handle in (self._idle, self._age):
            if handle is not None:
                handle.cancel()


class _AccessRecord:
    """What the access line of one Reason call says; filled in as the call goes."""

    def __init__(self, request_id: str, received: float) -> None:
        self.request_id = request_id
        self.received = received
        self.tenant: str | None = None
        self.method = "-"
        self.status = "CANCELLED"  # unless the call ends otherwise: the client went away
        self.run: _ReasonRun | None = None

    def log(self) -> None:
        run = self.run
        access_logger.info(
            "reason request=%s tenant=%s method=%s status=%s latency_ms=%.1f tokens_spent=%d cache=%s",
            self.request_id,
            _tenant_ref(self.tenant),
            self.method,
            self.status,
            (time.perf_counter() - self.received) * 1000.0,
            run.tokens_spent if run is not None else 0,
            run.cache_status.name if run is not None and run.cache_status is not None else "-",
        )


def _tenant_ref(tenant: str | None) -> str:
    """The tenant as the cache names it (a hash: tenant names stay out of the log)."""
    if tenant is None:
        return "-"
    from powersampling.cache.redis_cache import tenant_hash

    return tenant_hash(tenant)


class _ReasonRun:
    """One admitted request: runs `reason_cached` and turns what it reports into stream messages."""

    def __init__(
        self,
        servicer: ReasoningServicer,
        engine: Engine,
        request: ValidRequest,
        prompt_ids: list[int],
        request_id: str,
        received: float,
    ) -> None:
        self.servicer = servicer
        self.engine = engine
        self.request = request
        self.params = request.params
        self.prompt_ids = prompt_ids
        self.request_id = request_id
        self.received = received
        self.num_blocks = num_blocks(self.params, BudgetPlan.from_params(self.params).num_blocks)
        self.shown_text: dict[int, str] = {}  # SMC: the text last sent for each chain
        self.stops = StopMatcher(self.params.stop, engine.detokenize) if self.params.stop else None
        self.buffer = _EventBuffer(MAX_PENDING_EVENTS)
        self.cache_status: CacheStatus | None = None
        self._chain_tokens: dict[int, int] = {}  # tokens each chain has spent, as its events report
        info = engine.info
        try:
            self.observer: RequestObserver = servicer.telemetry.request(
                request_id=request_id,
                params=self.params,
                model=info.model,
                engine=info.engine,
                prompt_tokens=len(prompt_ids),
                tenant=request.tenant,
            )
        except Exception:  # telemetry never fails a request
            logger.exception("telemetry could not follow request %s", request_id)
            self.observer = NoTelemetry().request()

    def _on_cache_status(self, status: CacheStatus, resumed_from_block: int) -> None:
        self.cache_status = status
        _observe(self.observer.on_cache_status, status, resumed_from_block)
        self.buffer.put(
            started_event(
                request_id=self.request_id,
                status=status,
                resumed_from_block=resumed_from_block,
                prompt_tokens=len(self.prompt_ids),
                num_blocks=self.num_blocks,
                params=self.params,
                engine=self.engine,
            )
        )

    def _on_event(self, event: SamplerEvent) -> None:
        _observe(self.observer.on_event, event)
        if isinstance(event, _PROGRESS_EVENTS):
            self._chain_tokens[event.chain_index] = event.state.tokens_spent
            self.buffer.put(event)

    @property
    def tokens_spent(self) -> int:
        """Proposal tokens the chains have spent so far (an answer from the cache spends none)."""
        return sum(self._chain_tokens.values())

    def _progress(self, event: _ProgressEvent) -> pb.ReasonEvent:
        # Detokenizing one chain's text is cheap next to the block of model work that produced it.
        if isinstance(event, SmcChunkFinished):
            text = self._text(event.leader_token_ids)
        else:
            text = self._text(event.state.token_ids)  # SmcSweepFinished: the chain's kept answer
        if not isinstance(event, BlockFinished):
            # Another particle may lead now: revised when the text no longer extends what was shown.
            shown = self.shown_text.get(event.chain_index, "")
            self.shown_text[event.chain_index] = text
            return smc_progress_event(
                event, params=self.params, text=text, revised=not text.startswith(shown)
            )
        return progress_event(
            block_index=event.block_index,
            num_blocks=event.num_blocks,
            state=event.state,
            text=text,
            revised=event.revised,
            token_budget=self.params.token_budget,
        )

    def _text(self, token_ids: tuple[int, ...]) -> str:
        text = self.engine.detokenize(token_ids)
        return self.stops.trim_text(text) if self.stops is not None else text

    async def stream(self) -> AsyncGenerator[pb.ReasonEvent, None]:
        task = asyncio.get_running_loop().create_task(
            reason_cached(
                self.engine,
                self.prompt_ids,
                self.params,
                cache=self.servicer.cache,
                tenant=self.request.tenant,
                policy=self.request.cache_policy,
                on_event=self._on_event,
                on_cache_status=self._on_cache_status,
            ),
            name=f"reason-{self.request_id}",
        )
        task.add_done_callback(lambda _task: self.buffer.close())
        results: list[ReasonResult] | None = None
        first_sent = False
        try:
            async for item in self.buffer:
                yield item if isinstance(item, pb.ReasonEvent) else self._progress(item)
                if not first_sent:
                    first_sent = True
                    _observe(self.observer.on_first_event_sent)
            results, status = await task
            yield final_event(
                results=results,
                status=status,
                request_id=self.request_id,
                latency_ms=(time.perf_counter() - self.received) * 1000.0,
                prompt_tokens=len(self.prompt_ids),
                engine=self.engine,
            )
        except BaseException as exc:
            _observe(self.observer.finish, None, exc)
            raise
        finally:
            if not task.done():
                task.cancel()  # the call ended early: stop the sampler and its engine requests
                await asyncio.wait({task})
        _observe(self.observer.finish, results)


class _EventBuffer:
    """Hands the sampler's callbacks' output to the streaming coroutine, in order.

    Holds Started messages and progress events (MH blocks, SMC chunks and sweeps). Once
    `max_pending` items wait unsent (the client reads slower than the sampler runs), the buffer
    coalesces until it has drained: a new progress event replaces every unsent one of the same chain
    (an MH block is marked revised if any was; SMC's revised is judged against the text actually
    sent; its text supersedes theirs). So a slow or stuck client costs at most `max_pending` events,
    and after that one per chain, however long it does not read.
    """

    def __init__(self, max_pending: int) -> None:
        self._items: deque[pb.ReasonEvent | _ProgressEvent] = deque()
        self._max_pending = max_pending
        self._coalescing = False
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: pb.ReasonEvent | _ProgressEvent) -> None:
        if len(self._items) >= self._max_pending:
            self._coalescing = True
        if isinstance(item, _PROGRESS_EVENTS) and self._coalescing:
            revised = isinstance(item, BlockFinished) and item.revised
            kept: deque[pb.ReasonEvent | _ProgressEvent] = deque()
            for old in self._items:
                if isinstance(old, _PROGRESS_EVENTS) and old.chain_index == item.chain_index:
                    revised = revised or (isinstance(old, BlockFinished) and old.revised)
                else:
                    kept.append(old)
            self._items = kept
            if isinstance(item, BlockFinished) and revised != item.revised:
                item = dataclasses.replace(item, revised=revised)
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def __aiter__(self) -> AsyncIterator[pb.ReasonEvent | _ProgressEvent]:
        while True:
            while self._items:
                yield self._items.popleft()
            self._coalescing = False  # the client caught up
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()


def _observe(hook: Callable[..., Any], *args: Any) -> None:
    """Call a telemetry hook; telemetry never fails a request."""
    try:
        hook(*args)
    except Exception:
        logger.exception("telemetry hook %s failed", getattr(hook, "__qualname__", hook))


__all__ = ["MAX_PENDING_EVENTS", "ReasoningServicer"]
