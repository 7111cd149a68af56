"""The ReasoningService handlers: a thin adapter from protos to the serving core and back.

Reason: validate the ReasonRequest into a ValidRequest, iterate `ServingCore.reason` and turn each
event into a ReasonEvent; every error becomes a status in one place (`status_for`).

A client that stops reading blocks the stream's writes once gRPC's flow-control window is full; a
stream blocked that way for `stream_idle_timeout_s` (or older than `stream_max_age_s`) is ended by
`_StreamGuard`: its status is queued for the client and the call's task is cancelled, which stops
the sampling and frees the slot at once, whether or not the client ever reads again. Messages are
written with `context.write` for that reason (see Reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.cache.base import ChainCache
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished
from powersampling.server.auth import Authenticator
from powersampling.server.errors import ResponseTooLarge, abort_with_status, status_for
from powersampling.server.messages import (
    final_event,
    progress_event,
    service_description,
    smc_progress_event,
    started_event,
)
from powersampling.server.validation import MalformedRequest, validate_reason_request
from powersampling.serving.core import MAX_PENDING_EVENTS, AccessRecord, ServingCore
from powersampling.serving.core import EventBuffer as _EventBuffer
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.telemetry.base import Telemetry

logger = logging.getLogger("powersampling.server")


class ReasoningServicer:
    """Implements powersampling.v1.ReasoningService on the serving core (whose engine may still load)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        cache: ChainCache | None = None,
        telemetry: Telemetry | None = None,
        authenticator: Authenticator | None = None,
        core: ServingCore | None = None,
    ) -> None:
        if core is None:
            assert telemetry is not None and authenticator is not None
            core = ServingCore(config, cache=cache, telemetry=telemetry, authenticator=authenticator)
        self.core = core
        self.config = config

    @property
    def admission(self) -> Any:
        return self.core.admission

    def attach_engine(self, engine: Engine) -> None:
        """Start serving requests on `engine` (once it reports ready)."""
        self.core.attach_engine(engine)

    async def Describe(
        self, request: pb.DescribeRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServiceDescription:
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidArgument(request.field, request.message)
            engine, _ = self.core.ready_engine()
            return service_description(engine, self.config, cache_enabled=self.core.cache is not None)
        except Exception as exc:
            await abort_with_status(context, exc)

    async def Reason(
        self, request: pb.ReasonRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReasonEvent]:
        received = time.perf_counter()
        request_id = uuid.uuid4().hex
        access = AccessRecord(request_id, received, "grpc")
        guard = _StreamGuard(self.config, context, request_id)
        core = self.core
        try:
            engine, limits = core.ready_engine()
            identity = core.authenticator.identify(context.invocation_metadata())
            valid = validate_reason_request(
                request,
                core.defaults,
                limits,
                bound_tenant=identity.tenant if identity else None,
                smc_defaults=self.config.smc_defaults(),
            )
            events = core.reason(valid, request_id=request_id, received=received, access=access)
            # aclosing: if the call ends while suspended here, the run's clean-up still happens now.
            async with contextlib.aclosing(events):
                async for event in events:
                    message = _message(event, engine)
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


def _message(event: CallEvent, engine: Engine) -> pb.ReasonEvent:
    """The ReasonEvent of one of the core's events."""
    if isinstance(event, CallProgress):
        block = event.event
        if not isinstance(block, BlockFinished):
            return smc_progress_event(block, params=event.params, text=event.text, revised=event.revised)
        return progress_event(
            block_index=block.block_index,
            num_blocks=block.num_blocks,
            state=block.state,
            text=event.text,
            revised=event.revised,
            token_budget=event.params.token_budget,
        )
    if isinstance(event, CallStarted):
        return started_event(
            request_id=event.request_id,
            status=event.cache_status,
            resumed_from_block=event.resumed_from_block,
            prompt_tokens=event.prompt_tokens,
            num_blocks=event.num_blocks,
            params=event.params,
            engine=engine,
        )
    assert isinstance(event, CallFinished)
    return final_event(
        results=event.results,
        status=event.cache_status,
        request_id=event.request_id,
        latency_ms=event.latency_ms,
        prompt_tokens=event.prompt_tokens,
        engine=engine,
    )


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


__all__ = ["MAX_PENDING_EVENTS", "ReasoningServicer", "_EventBuffer"]
