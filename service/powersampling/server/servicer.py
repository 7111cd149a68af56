"""The ReasoningService handlers: a thin adapter from protos to the serving core and back.

Reason: validate the ReasonRequest into a ValidRequest, iterate `ServingCore.reason` and turn each
event into a ReasonEvent; every error becomes a status in one place (`status_for`).

A client that stops reading blocks the stream's writes once gRPC's flow-control window is full; a
stream blocked that way for `stream_idle_timeout_s` (or older than `stream_max_age_s`) is ended by
the serving core's `CallBounds`: its status is queued for the client (RESOURCE_EXHAUSTED, or
DEADLINE_EXCEEDED) and the call's task is cancelled, which stops the sampling and frees the slot at
once, whether or not the client ever reads again. Messages are written with `context.write` for
that reason (see Reason).
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
from powersampling.errors import InvalidArgument, PowerSamplingError
from powersampling.events import BlockFinished
from powersampling.server.auth import Authenticator
from powersampling.server.errors import abort_with_status, status_for
from powersampling.server.messages import (
    final_event,
    progress_event,
    service_description,
    smc_progress_event,
    started_event,
)
from powersampling.server.validation import MalformedRequest, validate_reason_request
from powersampling.serving.bounds import CallBounds
from powersampling.serving.core import MAX_PENDING_EVENTS, AccessRecord, ServingCore
from powersampling.serving.core import EventBuffer as _EventBuffer
from powersampling.serving.errors import ResponseTooLarge
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
        guard = CallBounds(self.config, request_id, on_expired=lambda error: _queue_status(context, error))
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
                access.status = status_for(guard.expired)[0].name
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


# The statuses queued for clients that stopped reading, until each goes out (or its connection does).
_QUEUED_STATUSES: set[asyncio.Task[None]] = set()


def _queue_status(context: grpc.aio.ServicerContext, error: PowerSamplingError) -> None:
    """Send the status of `error` in a task of its own: it goes out after the data the client has
    not read, whenever it reads (or not at all, if its connection goes first)."""
    code, message = status_for(error)

    async def send() -> None:
        with contextlib.suppress(Exception):
            await context.abort(code, message)

    task = asyncio.get_running_loop().create_task(send())
    _QUEUED_STATUSES.add(task)
    task.add_done_callback(_QUEUED_STATUSES.discard)


__all__ = ["MAX_PENDING_EVENTS", "ReasoningServicer", "_EventBuffer"]
