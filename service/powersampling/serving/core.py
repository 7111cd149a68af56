"""`ServingCore`: one request from admission to its last event, whatever the transport.

A transport identifies the caller (`identify`), validates its request into a `ValidRequest` against
`ready_engine()`'s limits, and iterates `reason(...)`: the core admits it (or raises
ServerOverloaded), encodes the prompt off the event loop, runs `reason_cached` (cache look-up,
resume from checkpoints, sampling) and reports CallStarted, CallProgress and CallFinished. The
sampler reports through callbacks; a bounded buffer carries its events to the iterating coroutine,
so sampling and the transport's writes run side by side. When the iteration ends early (client gone,
deadline, shutdown) the sampling task is cancelled, which cancels its pending engine requests.

Every call ends with one access line at INFO on the "powersampling.access" logger (request id,
transport, tenant hash, method, status, latency, tokens spent, cache status; never the prompt).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from powersampling.api import ReasonResult, encode_and_check
from powersampling.cache.base import CacheStatus, ChainCache
from powersampling.cache.cached_reason import reason_cached
from powersampling.cache.redis_keys import tenant_hash
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished, SamplerEvent, SmcChunkFinished
from powersampling.sampler import make_sampler
from powersampling.serving.admission import AdmissionControl
from powersampling.serving.errors import ServiceUnavailable, Unauthenticated
from powersampling.serving.events import (
    PROGRESS_EVENTS,
    CallEvent,
    CallFinished,
    CallProgress,
    CallStarted,
    ProgressEvent,
)
from powersampling.serving.limits import WorkLimits
from powersampling.serving.request import Identity, RequestLimits, ValidRequest
from powersampling.telemetry.base import NoTelemetry, RequestObserver, Telemetry

logger = logging.getLogger("powersampling.server")
access_logger = logging.getLogger("powersampling.access")

# Progress events waiting for a slow reader beyond this many are coalesced per chain (each chain's
# latest text replaces its older unsent one), so a slow client costs bounded memory.
MAX_PENDING_EVENTS = 64
T = TypeVar("T")


class CallerCheck(Protocol):
    """What the core needs of an authenticator (see powersampling.server.auth.Authenticator)."""

    @property
    def enabled(self) -> bool: ...

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Identity | None: ...


class ServingCore:
    """Admission, auth decisions, the engine, cache and telemetry of every request, for every transport."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        cache: ChainCache | None,
        telemetry: Telemetry,
        authenticator: CallerCheck,
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

    @property
    def engine(self) -> Engine | None:
        """The engine once attached (it may still report not ready), else None."""
        return self._engine

    @property
    def ready(self) -> bool:
        return self._engine is not None and self._engine.ready

    def ready_engine(self) -> tuple[Engine, RequestLimits]:
        """The engine and the request limits; ServiceUnavailable while the model loads."""
        if self._engine is None or self._limits is None or not self._engine.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly")
        return self._engine, self._limits

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Identity:
        """The caller of a call with `metadata` (its `authorization` entry); Unauthenticated if none."""
        identity = self.authenticator.identify(metadata)
        if identity is None:
            raise Unauthenticated()
        return identity

    async def reason(
        self,
        request: ValidRequest,
        *,
        request_id: str,
        received: float,
        access: AccessRecord | None = None,
    ) -> AsyncGenerator[CallEvent, None]:
        """Admit and run `request`, yielding its events; raises the serving errors (see module notes).

        Close the generator (e.g. `contextlib.aclosing`) to end the call early: the sampling stops.
        """
        engine, _ = self.ready_engine()
        if access is not None:
            access.tenant, access.method = request.tenant, request.params.method.value
        async with self.admission.slot():
            # Tokenizing a long prompt is real CPU work: keep it off the event loop.
            prompt_ids = await asyncio.to_thread(_encode, engine, request)
            run = _ReasonRun(self, engine, request, prompt_ids, request_id, received)
            if access is not None:
                access.run = run
            async with contextlib.aclosing(run.stream()) as events:
                async for event in events:
                    yield event


def _encode(engine: Engine, request: ValidRequest) -> list[int]:
    """The prompt's token ids; errors name the transport's prompt field (text, messages, ...)."""
    try:
        return encode_and_check(engine, request.prompt, request.params, request.chat, tools=request.tools)
    except InvalidArgument as exc:
        if exc.field != "prompt" or request.prompt_field == "prompt":
            raise
        raise InvalidArgument(request.prompt_field, exc.message) from None


class AccessRecord:
    """What the access line of one call says; filled in as the call goes, written by `log()`."""

    def __init__(self, request_id: str, received: float, transport: str = "grpc") -> None:
        self.request_id = request_id
        self.received = received
        self.transport = transport
        self.tenant: str | None = None
        self.method = "-"
        self.status = "CANCELLED"  # unless the call ends otherwise: the client went away
        self.run: _ReasonRun | None = None

    def log(self) -> None:
        run = self.run
        access_logger.info(
            "reason request=%s transport=%s tenant=%s method=%s status=%s latency_ms=%.1f "
            "tokens_spent=%d cache=%s",
            self.request_id,
            self.transport,
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
    return tenant_hash(tenant)


class _ReasonRun:
    """One admitted request: runs `reason_cached` and turns what it reports into call events."""

    def __init__(
        self,
        core: ServingCore,
        engine: Engine,
        request: ValidRequest,
        prompt_ids: list[int],
        request_id: str,
        received: float,
    ) -> None:
        self.core = core
        self.engine = engine
        self.request = request
        self.params = request.params
        self.prompt_ids = prompt_ids
        self.request_id = request_id
        self.received = received
        # The request's sampler, for its plan and its answer text (the run builds its own; the plan
        # and the text do not depend on the seed, which an unseeded request draws later).
        self.sampler = make_sampler(engine, prompt_ids, self.params.with_seed(0))
        self.num_blocks = self.sampler.progress_slots
        self.shown_text: dict[int, str] = {}  # SMC: the text last sent for each chain
        self.buffer: EventBuffer[CallStarted] = EventBuffer(MAX_PENDING_EVENTS)
        self.cache_status: CacheStatus | None = None
        self._chain_tokens: dict[int, int] = {}  # tokens each chain has spent, as its events report
        info = engine.info
        try:
            self.observer: RequestObserver = core.telemetry.request(
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
            CallStarted(
                request_id=self.request_id,
                cache_status=status,
                resumed_from_block=resumed_from_block,
                prompt_tokens=len(self.prompt_ids),
                num_blocks=self.num_blocks,
                params=self.params,
                engine=self.engine.info,
            )
        )

    def _on_event(self, event: SamplerEvent) -> None:
        _observe(self.observer.on_event, event)
        if isinstance(event, PROGRESS_EVENTS):
            self._chain_tokens[event.chain_index] = event.state.tokens_spent
            self.buffer.put(event)

    @property
    def tokens_spent(self) -> int:
        """Proposal tokens the chains have spent so far (an answer from the cache spends none)."""
        return sum(self._chain_tokens.values())

    def _progress(self, event: ProgressEvent) -> CallProgress:
        # Detokenizing one chain's text is cheap next to the block of model work that produced it.
        if isinstance(event, SmcChunkFinished):
            text = self._text(event.leader_token_ids)
        else:
            text = self._text(event.state.token_ids)  # SmcSweepFinished: the chain's kept answer
        if isinstance(event, BlockFinished):
            revised = event.revised
        else:
            # Another particle may lead now: revised when the text no longer extends what was shown.
            shown = self.shown_text.get(event.chain_index, "")
            self.shown_text[event.chain_index] = text
            revised = not text.startswith(shown)
        return CallProgress(event=event, text=text, revised=revised, params=self.params)

    def _text(self, token_ids: Sequence[int]) -> str:
        return self.sampler.answer_text(token_ids)

    async def stream(self) -> AsyncGenerator[CallEvent, None]:
        task = asyncio.get_running_loop().create_task(
            reason_cached(
                self.engine,
                self.prompt_ids,
                self.params,
                cache=self.core.cache,
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
                yield item if isinstance(item, CallStarted) else self._progress(item)
                if not first_sent:
                    first_sent = True
                    _observe(self.observer.on_first_event_sent)
            results, status = await task
            yield CallFinished(
                results=results,
                cache_status=status,
                request_id=self.request_id,
                latency_ms=(time.perf_counter() - self.received) * 1000.0,
                prompt_tokens=len(self.prompt_ids),
                engine=self.engine.info,
            )
        except BaseException as exc:
            _observe(self.observer.finish, None, exc)
            raise
        finally:
            if not task.done():
                task.cancel()  # the call ended early: stop the sampler and its engine requests
                await asyncio.wait({task})
        _observe(self.observer.finish, results)


class EventBuffer(Generic[T]):
    """Hands the sampler's callbacks' output to the iterating coroutine, in order.

    Holds other items (a call's start) and progress events (MH blocks, SMC chunks and sweeps). Once
    `max_pending` items wait unsent (the client reads slower than the sampler runs), the buffer
    coalesces until it has drained: a new progress event replaces every unsent one of the same chain
    (an MH block is marked revised if any was; SMC's revised is judged against the text actually
    sent; its text supersedes theirs). So a slow or stuck client costs at most `max_pending` events,
    and after that one per chain, however long it does not read.
    """

    def __init__(self, max_pending: int) -> None:
        self._items: deque[T | ProgressEvent] = deque()
        self._max_pending = max_pending
        self._coalescing = False
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T | ProgressEvent) -> None:
        if len(self._items) >= self._max_pending:
            self._coalescing = True
        if isinstance(item, PROGRESS_EVENTS) and self._coalescing:
            revised = isinstance(item, BlockFinished) and item.revised
            kept: deque[T | ProgressEvent] = deque()
            for old in self._items:
                if isinstance(old, PROGRESS_EVENTS) and old.chain_index == item.chain_index:
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

    async def __aiter__(self) -> AsyncIterator[T | ProgressEvent]:
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


__all__ = ["MAX_PENDING_EVENTS", "AccessRecord", "CallerCheck", "EventBuffer", "ServingCore"]
