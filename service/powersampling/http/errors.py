"""Exceptions → HTTP statuses and OpenAI error objects, in one place (the HTTP twin of server/errors.py).

A caller's mistake names its parameter (400); overload is 429 with Retry-After; a loading or
draining server is 503; anything unexpected is 500 with a request id to find in the server log, and
never an internal message or traceback.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from powersampling.errors import EngineError, EngineOverloaded, InvalidArgument
from powersampling.http.protocol import ErrorInfo, ErrorResponse
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

logger = logging.getLogger("powersampling.http")


@dataclass(frozen=True, slots=True)
class HttpError:
    """One error as the HTTP API returns it."""

    status: int
    body: ErrorResponse
    headers: dict[str, str] = field(default_factory=dict)


class RequestError(Exception):
    """A malformed HTTP request (body, JSON, parameters); `param` names the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None, **headers: str
) -> HttpError:
    info = ErrorInfo(message=message, type=kind, param=param, code=code)
    return HttpError(status, ErrorResponse(error=info), {k.replace("_", "-"): v for k, v in headers.items()})


def http_error(exc: BaseException, request_id: str = "") -> HttpError:
    """The status, OpenAI error object and headers for `exc`."""
    ref = f" (request {request_id})" if request_id else ""
    while isinstance(exc, BaseExceptionGroup):  # the sampler's task group wraps what its chains raised
        exc = exc.exceptions[0]
    if isinstance(exc, RequestError):
        return _error(exc.status, exc.message, "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, InvalidArgument):
        return _error(400, str(exc), "invalid_request_error", exc.field, "invalid_value")
    if isinstance(exc, Unauthenticated):
        return _error(
            401, str(exc), "authentication_error", None, "invalid_api_key", WWW_Authenticate="Bearer"
        )
    if isinstance(exc, PermissionDenied):
        return _error(403, str(exc), "permission_error", exc.field, "permission_denied")
    if isinstance(exc, ServerOverloaded):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return _error(429, str(exc), "rate_limit_error", None, "server_overloaded", Retry_After=retry)
    if isinstance(exc, EngineOverloaded):
        return _error(429, str(exc), "rate_limit_error", None, "engine_overloaded", Retry_After="1")
    if isinstance(exc, ResponseTooLarge):
        return _error(400, str(exc), "invalid_request_error", "max_tokens", "response_too_large")
    if isinstance(exc, ServiceUnavailable):
        return _error(503, str(exc), "service_unavailable", None, "unavailable", Retry_After="5")
    if isinstance(exc, DeadlineExceeded):
        return _error(504, str(exc), "timeout", None, "deadline_exceeded")
    if isinstance(exc, StreamStalled):
        return _error(408, str(exc), "timeout", None, "stream_idle_timeout")
    if isinstance(exc, Cancelled):
        return _error(499, str(exc), "cancelled", None, "cancelled")
    if isinstance(exc, EngineError):
        logger.error("engine error%s: %s", ref, exc)
        return _error(500, f"the engine failed{ref}; details are in the server log", "server_error")
    logger.error("unexpected error%s", ref, exc_info=exc)
    return _error(500, f"internal error{ref}", "server_error")


def error_response(error: HttpError, request_id: str = "") -> JSONResponse:
    """The JSON response of `error`."""
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(error.body.model_dump(mode="json"), status_code=error.status, headers=headers)


def validation_error(exc: ValidationError) -> RequestError:
    """A 400 naming the first parameter pydantic refused ("messages.0.role" → "messages[0].role")."""
    error = exc.errors(include_url=False)[0]
    loc = [
        part for part in error["loc"] if part not in ("str", "list[TextPart]", "list[int]", "function-after")
    ]
    kind = error["type"]
    if kind == "json_invalid":
        return RequestError(400, f"the body is not valid JSON: {error['msg']}", "body", "invalid_json")
    if kind == "extra_forbidden":
        name = _param_name(loc)
        return RequestError(400, f"{name}: unknown parameter", name, "unknown_parameter")
    name = _param_name(loc) or "body"
    return RequestError(400, f"{name}: {error['msg']}", name, "invalid_value")


def _param_name(loc: list[int | str]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


__all__ = ["HttpError", "RequestError", "error_response", "http_error", "validation_error"]
