"""Sync and asyncio clients of powersampling.v1.ReasoningService.

    with PowerSamplingClient("localhost:50051") as client:
        for event in client.stream("What is 17 + 25?", seed=1):
            ...                                   # Started, Progress..., ReasonResult
        print(client.reason("What is 17 + 25?").text)

    async with AsyncPowerSamplingClient("localhost:50051") as client:
        result = await client.reason("What is 17 + 25?")

Calls that fail with UNAVAILABLE before the server sent anything (a server starting or restarting)
are retried with exponential backoff by gRPC itself, through the channel's service config.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc

from powersampling_client._convert import (
    Prompt,
    ReasonOptions,
    build_request,
    error_from_rpc,
    event_from_proto,
    no_final_error,
    service_info_from_proto,
)
from powersampling_client._proto.v1 import reasoning_pb2 as pb
from powersampling_client._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling_client.types import ReasonEvent, ReasonResult, ServiceInfo

SERVICE_NAME = "powersampling.v1.ReasoningService"
DEFAULT_TIMEOUT_S = 600.0


class ClientSettings(TypedDict, total=False):
    """Keyword settings of both clients (see _ClientBase)."""

    token: str | None
    tls: bool
    root_certificates: bytes | str | Path | None
    timeout_s: float | None
    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float
    options: Sequence[tuple[str, Any]]


class _ClientBase:
    """Connection settings shared by the sync and the asyncio client.

    target: "host:port". token: sent as `authorization: Bearer <token>`. tls or root_certificates
    (PEM bytes or a file path) switch to TLS (system roots when none are given). timeout_s: default
    deadline of each call (None: none). max_attempts, initial_backoff_s, max_backoff_s: retries of
    UNAVAILABLE (gRPC allows at most 5 attempts). options: extra gRPC channel options.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_attempts: int = 5,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive (or None for no deadline)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.target = target
        self.timeout_s = timeout_s
        self._credentials: grpc.ChannelCredentials | None = None
        if root_certificates is not None or tls:
            if isinstance(root_certificates, str | Path):
                root_certificates = Path(root_certificates).read_bytes()
            self._credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        retries = retry_service_config(max_attempts, initial_backoff_s, max_backoff_s)
        self._options = (("grpc.service_config", retries), ("grpc.enable_retries", 1), *options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s


def retry_service_config(max_attempts: int, initial_backoff_s: float, max_backoff_s: float) -> str:
    """A gRPC service config that retries UNAVAILABLE calls of the service with exponential backoff.

    gRPC retries a call only before the server sent a response, so a stream that already delivered
    events is never replayed. gRPC caps attempts at 5.
    """
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    if max_attempts > 1:
        method_config["retryPolicy"] = {
            "maxAttempts": min(max_attempts, 5),
            "initialBackoff": f"{initial_backoff_s:g}s",
            "maxBackoff": f"{max_backoff_s:g}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [method_config]})


class PowerSamplingClient(_ClientBase):
    """Blocking client (settings: see _ClientBase). Thread-safe; close it, or use `with`."""

    def __init__(self, target: str, **settings: Unpack[ClientSettings]) -> None:
        super().__init__(target, **settings)
        if self._credentials is None:
            self._channel = grpc.insecure_channel(target, options=self._options)
        else:
            self._channel = grpc.secure_channel(target, self._credentials, options=self._options)
        self._stub = pb_grpc.ReasoningServiceStub(self._channel)

    def __enter__(self) -> PowerSamplingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def stream(
        self,
        prompt: Prompt,
        *,
        timeout_s: float | None = None,
        **options: Unpack[ReasonOptions],
    ) -> Iterator[ReasonEvent]:
        """Events of one request: Started, Progress per finished block, then the ReasonResult.

        Options: see ReasonOptions; unset ones take the server's defaults. timeout_s: this call's
        deadline (default: the client's). Closing the iterator early (break, or
        `contextlib.closing`) cancels the call, and the server stops its work.
        Raises PowerSamplingError.
        """
        request = build_request(prompt, **options)
        return self._stream(request, timeout_s)

    def _stream(self, request: pb.ReasonRequest, timeout_s: float | None) -> Iterator[ReasonEvent]:
        call = self._stub.Reason(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        try:
            for message in call:
                yield event_from_proto(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # a no-op once the call is over; otherwise the server stops working

    def reason(
        self, prompt: Prompt, *, timeout_s: float | None = None, **options: Unpack[ReasonOptions]
    ) -> ReasonResult:
        """The final result of one request (options as in `stream`)."""
        for event in self.stream(prompt, timeout_s=timeout_s, **options):
            if isinstance(event, ReasonResult):
                return event
        raise no_final_error()

    def describe(self, *, timeout_s: float | None = None) -> ServiceInfo:
        """The model, engine, defaults and limits of the server."""
        try:
            response = self._stub.Describe(
                pb.DescribeRequest(), timeout=self._timeout(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return service_info_from_proto(response)


class AsyncPowerSamplingClient(_ClientBase):
    """asyncio client (settings: see _ClientBase). Use it inside one event loop."""

    def __init__(self, target: str, **settings: Unpack[ClientSettings]) -> None:
        super().__init__(target, **settings)
        self._channel: grpc.aio.Channel | None = None
        self._stub_instance: pb_grpc.ReasoningServiceStub | None = None

    @property
    def _stub(self) -> pb_grpc.ReasoningServiceStub:
        # The channel is made on first use, inside the event loop that will drive it.
        if self._stub_instance is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub_instance = pb_grpc.ReasoningServiceStub(self._channel)
        return self._stub_instance

    async def __aenter__(self) -> AsyncPowerSamplingClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_instance = None

    async def stream(
        self,
        prompt: Prompt,
        *,
        timeout_s: float | None = None,
        **options: Unpack[ReasonOptions],
    ) -> AsyncIterator[ReasonEvent]:
        """Events of one request (see PowerSamplingClient.stream); leaving early cancels the call."""
        request = build_request(prompt, **options)
        call = self._stub.Reason(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        try:
            async for message in call:
                yield event_from_proto(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    async def reason(
        self, prompt: Prompt, *, timeout_s: float | None = None, **options: Unpack[ReasonOptions]
    ) -> ReasonResult:
        """The final result of one request (options as in `stream`)."""
        events = self.stream(prompt, timeout_s=timeout_s, **options)
        try:
            async for event in events:
                if isinstance(event, ReasonResult):
                    return event
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        raise no_final_error()

    async def describe(self, *, timeout_s: float | None = None) -> ServiceInfo:
        try:
            response = await self._stub.Describe(
                pb.DescribeRequest(), timeout=self._timeout(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return service_info_from_proto(response)


__all__ = ["AsyncPowerSamplingClient", "ClientSettings", "PowerSamplingClient", "retry_service_config"]
