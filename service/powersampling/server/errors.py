"""Exceptions → gRPC status codes, in one place.

Every handler ends in `abort_with_status`: a caller's mistake names its field (INVALID_ARGUMENT),
overload says so (RESOURCE_EXHAUSTED), and anything unexpected becomes INTERNAL with a request id to
find in the server log; no traceback or internal message ever reaches the client.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from powersampling.errors import EngineError, EngineOverloaded, InvalidArgument
from powersampling.serving.errors import (
    Cancelled,
    DeadlineExceeded,
    PermissionDenied,
    ResponseTooLarge,
    ServerOverloaded,
    ServiceUnavailable,
    StreamStalled,
    Unauthenticated,
)

logger = logging.getLogger("powersampling.server")


def status_for(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and the client-safe message for `exc`."""
    ref = f" (request {request_id})" if request_id else ""
    while isinstance(exc, BaseExceptionGroup):  # the sampler's task group wraps what its chains raised
        exc = exc.exceptions[0]
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, ServerOverloaded | EngineOverloaded | ResponseTooLarge | StreamStalled):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, ServiceUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, str(exc)
    if isinstance(exc, EngineError):
        logger.error("engine error%s: %s", ref, exc)
        return grpc.StatusCode.INTERNAL, f"the engine failed{ref}; details are in the server log"
    logger.error("unexpected error%s", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error{ref}"


async def abort_with_status(
    context: grpc.aio.ServicerContext, exc: BaseException, request_id: str = ""
) -> NoReturn:
    """End the call with the status that `exc` maps to (raises, as `context.abort` does)."""
    code, message = status_for(exc, request_id)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "PermissionDenied",
    "ResponseTooLarge",
    "ServerOverloaded",
    "ServiceUnavailable",
    "Unauthenticated",
    "abort_with_status",
    "status_for",
]
