"""The ReasoningService handlers: validate → admit → `reason_cached` → stream.

The sampler reports through plain callbacks; a small buffer carries its events to the stream, so the
sampling task and the stream's writes run side by side on the event loop. When the call ends early
(client cancel, deadline, shutdown past the drain timeout) the sampling task is cancelled, which
cancels its pending engine requests: the engine drops them instead of generating for nobody.
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
from powersampling.events import BlockFinished, SamplerEvent, SmcChunkFinished, SmcSweepFinished
from powersampling.sampler import BudgetPlan
from powersampling.sampler.stops import StopMatcher
from powersampling.server.admission import AdmissionControl
from powersampling.server.auth import Authenticator
from powersampling.server.errors import ServiceUnavailable, abort_with_status
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
        )

    def _ready_engine(self) -> tuple[Engine, RequestLimits]:
        if self._engine is None or self._limits is None or not self._engine.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly")
        return self._engine, self._limits

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServiceDescription:
        try:
            engine, _ = self._ready_engine()
            return service_description(engine, self.config, cache_enabled=self.cache is not None)
        except Exception as exc:
            await abort_with_status(context, exc)

    async def Reason(
        self, request: pb.ReasonRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReasonEvent]:
        received = time.perf_counter()
        request_id = uuid.uuid4().hex
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
            async with self.admission.slot():
                # Tokenizing a long prompt is real CPU work: keep it off the event loop.
                prompt_ids = await asyncio.to_thread(
                    encode_and_check, engine, valid.prompt, valid.params, valid.chat
                )
                run = _ReasonRun(self, engine, valid, prompt_ids, request_id, received)
                # aclosing: if the call ends while suspended here, the run's clean-up still happens now.
                async with contextlib.aclosing(run.stream()) as messages:
                    async for message in messages:
                        yield message
        except Exception as exc:
            await abort_with_status(context, exc, request_id)


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
            self.buffer.put(event)

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

    Holds Started messages and progress events. Past `max_pending` unsent items, a new progress
    event replaces the same chain's unsent one (an MH block is marked revised if either was; SMC's
    revised is judged against the text actually sent), so memory stays bounded by
    max(max_pending, chains) however slowly the client reads.
    """

    def __init__(self, max_pending: int) -> None:
        self._items: deque[pb.ReasonEvent | _ProgressEvent] = deque()
        self._max_pending = max_pending
        self._wakeup = asyncio.Event()
        self._closed = False

    def put(self, item: pb.ReasonEvent | _ProgressEvent) -> None:
        if isinstance(item, _PROGRESS_EVENTS) and len(self._items) >= self._max_pending:
            for old in reversed(self._items):
                if isinstance(old, _PROGRESS_EVENTS) and old.chain_index == item.chain_index:
                    self._items.remove(old)
                    if isinstance(item, BlockFinished) and isinstance(old, BlockFinished):
                        item = dataclasses.replace(item, revised=item.revised or old.revised)
                    break
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def __aiter__(self) -> AsyncIterator[pb.ReasonEvent | _ProgressEvent]:
        while True:
            while self._items:
                yield self._items.popleft()
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
