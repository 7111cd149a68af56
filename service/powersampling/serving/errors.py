"""The serving core's errors: what a transport maps to its own status codes, one class per outcome.

A caller's mistake is `powersampling.errors.InvalidArgument` (it names the field); an engine out of
memory is `EngineOverloaded`. The rest are here.
"""

from __future__ import annotations

from powersampling.errors import PowerSamplingError


class ServerOverloaded(PowerSamplingError):
    """Admission refused the request: every slot is busy and the queue is full."""

    retry_after_s = 1.0  # a hint for HTTP's Retry-After: slots free in about a request's time


class ServiceUnavailable(PowerSamplingError):
    """The server cannot take requests right now (the model is loading, or it is shutting down)."""


class ResponseTooLarge(PowerSamplingError):
    """An outgoing message would exceed max_message_bytes (the client could not receive it)."""


class Unauthenticated(PowerSamplingError):
    """The call carries no valid bearer token."""

    def __init__(self, message: str = "missing or invalid 'authorization: Bearer <token>'") -> None:
        self.field = "authorization"
        super().__init__(f"authorization: {message.removeprefix('authorization: ')}")


class PermissionDenied(PowerSamplingError):
    """The caller is authenticated but may not do what it asked; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DeadlineExceeded(PowerSamplingError):
    """The call ran past its deadline (the client's, or the server's stream_max_age_s)."""


class StreamStalled(PowerSamplingError):
    """The client read nothing for stream_idle_timeout_s while the server waited to send; the call
    was ended to free its slot."""


class Cancelled(PowerSamplingError):
    """The client went away; the work was stopped."""


__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "PermissionDenied",
    "ResponseTooLarge",
    "ServerOverloaded",
    "ServiceUnavailable",
    "StreamStalled",
    "Unauthenticated",
]
