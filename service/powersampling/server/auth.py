"""Bearer-token authentication: `authorization: Bearer <token>` metadata on every call.

Health checks are exempt (load balancers and orchestrators probe without credentials). Tokens are
compared in constant time, against every configured token, so neither a token's content nor which
token matched leaks through timing. A token may be bound to a tenant: requests made with it use
that tenant's cache namespace, whatever they ask for.

Tenants are a security boundary only through tenant tokens. The shared token (`auth_token`) is
bound to the default tenant "" as soon as any tenant token is configured, so it can never read or
write a tenant's entries; with no tenant tokens, the request's `tenant` field is a free cache
namespace that the shared token may choose.

Refused calls are logged (method and peer, never the token) at WARNING.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from powersampling.serving.request import Identity

logger = logging.getLogger("powersampling.server")

EXEMPT_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text[: len(_SCHEME)].lower() == _SCHEME:
            return text[len(_SCHEME) :].strip()
    return None


class Authenticator:
    """Checks bearer tokens: `token` (shared) and `tenant_tokens` (token → tenant).

    The shared token carries no tenant when it is the only token, and the default tenant "" when
    tenant tokens exist (see the module's docstring).
    """

    def __init__(self, token: str | None = None, tenant_tokens: Mapping[str, str] | None = None) -> None:
        entries: list[tuple[bytes, str | None]] = []
        if token is not None:
            if not token.strip():
                raise ValueError("auth_token: must not be empty")
            entries.append((_digest(token), "" if tenant_tokens else None))
        for tok, tenant in (tenant_tokens or {}).items():
            if not tok:
                raise ValueError("auth_tokens: a token must not be empty")
            entries.append((_digest(tok), tenant))
        self._entries = entries

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Identity | None:
        """The caller's identity, or None when authentication is on and the token is missing or wrong."""
        if not self._entries:
            return Identity(tenant=None)
        token = bearer_token(metadata)
        if token is None:
            return None
        presented = _digest(token)
        match: Identity | None = None
        for digest, tenant in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, presented):
                match = Identity(tenant=tenant)
        return match


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token with UNAUTHENTICATED (health checks excepted)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(EXEMPT_METHOD_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        if self._auth.identify(metadata) is not None:
            return handler
        return _unauthenticated_like(handler, method)


def _unauthenticated_like(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call (and logs it, without the token)."""

    async def _deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        reason = "no bearer token" if bearer_token(context.invocation_metadata()) is None else "a wrong token"
        logger.warning("refused credentials: %s from %s (%s)", method, context.peer(), reason)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "authorization: missing or invalid 'authorization: Bearer <token>'",
        )

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        _deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


__all__ = ["Authenticator", "BearerTokenInterceptor", "Identity", "bearer_token"]
