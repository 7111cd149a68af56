"""The gRPC server's share of telemetry: interceptors, kept out of the transport-neutral `Telemetry`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class GrpcInstrumented(Protocol):
    """A telemetry that instruments a gRPC server (OpenTelemetry's gRPC server spans)."""

    def server_interceptors(self) -> Sequence[Any]: ...


def grpc_interceptors(telemetry: object) -> tuple[Any, ...]:
    """The gRPC aio server interceptors `telemetry` brings (none when it instruments no gRPC server)."""
    if isinstance(telemetry, GrpcInstrumented):
        return tuple(telemetry.server_interceptors())
    return ()


__all__ = ["GrpcInstrumented", "grpc_interceptors"]
