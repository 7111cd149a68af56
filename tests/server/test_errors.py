"""Exceptions → status codes: named fields, overload, and no internals leaked on unexpected errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.engines.toy import ToyEngine
from powersampling.errors import EngineError, EngineOverloaded, InvalidArgument
from powersampling.server.errors import status_for
from powersampling.serving.errors import PermissionDenied, ServerOverloaded, ServiceUnavailable

from tests.server.support import TOKENS, RecordingTelemetry, StartServer, collect, rpc_error, small_request

INTERNAL = grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (InvalidArgument("alpha", "is nan"), grpc.StatusCode.INVALID_ARGUMENT, "alpha: is nan"),
        (ServerOverloaded("at capacity"), grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity"),
        (EngineOverloaded("out of memory"), grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory"),
        (ServiceUnavailable("loading"), grpc.StatusCode.UNAVAILABLE, "loading"),
        (PermissionDenied("tenant", "no"), grpc.StatusCode.PERMISSION_DENIED, "tenant: no"),
        (EngineError("CUDA error at /opt/x.cu:12"), INTERNAL, "the engine failed (request r1)"),
        (ExceptionGroup("chains", [EngineError("CUDA error at /opt/x.cu")]), INTERNAL, "the engine failed"),
        (
            ExceptionGroup("chains", [InvalidArgument("prompt", "bad")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt",
        ),
        (KeyError("/secret/path"), INTERNAL, "internal error (request r1)"),
    ],
)
def test_status_for(exc: Exception, code: grpc.StatusCode, message: str) -> None:
    got_code, got_message = status_for(exc, "r1")
    assert got_code == code and got_message.startswith(message)
    if code == INTERNAL:
        assert "secret" not in got_message and "CUDA" not in got_message


class BrokenTextEngine(ToyEngine):
    """Generates fine, but turning tokens into text fails in a way no one planned for."""

    def detokenize(self, token_ids: Sequence[int]) -> str:
        raise KeyError("/var/run/secret.sock")


class BrokenTelemetry(RecordingTelemetry):
    def request(self, **attributes: Any) -> Any:
        raise RuntimeError("exporter down")


async def test_an_unexpected_error_is_internal_without_details(start_server: StartServer) -> None:
    engine = BrokenTextEngine(len(TOKENS), 0, _uniform, token_strings=TOKENS)
    server = await start_server(engine)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        error = await rpc_error(stub, small_request())
        assert error.code() == INTERNAL
        details = error.details() or ""
        assert details.startswith("internal error (request ") and "secret" not in details
        assert "Traceback" not in details and "KeyError" not in details
        assert (await stub.Describe(pb.DescribeRequest())).model == "toy"  # still serving


async def test_failing_telemetry_never_fails_a_request(start_server: StartServer) -> None:
    server = await start_server(telemetry=BrokenTelemetry())
    async with grpc.aio.insecure_channel(server.target) as channel:
        events = await collect(pb_grpc.ReasoningServiceStub(channel), small_request())
        assert events[-1].HasField("final")


def _uniform(prefix: tuple[int, ...]) -> list[float]:
    return [math.log(1 / len(TOKENS))] * len(TOKENS)


def _fails_late(prefix: tuple[int, ...]) -> list[float]:
    if len(prefix) > 12:
        raise ValueError("tensor shape mismatch in /models/x")
    return _uniform(prefix)


async def test_an_engine_failure_is_internal_and_the_server_keeps_serving(start_server: StartServer) -> None:
    engine = ToyEngine(len(TOKENS), 0, _fails_late, token_strings=TOKENS)
    server = await start_server(engine)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        error = await rpc_error(stub, small_request(max_new_tokens=40, block_size=40))
        assert error.code() == grpc.StatusCode.INTERNAL
        details = error.details() or ""
        assert details.startswith("the engine failed") and "tensor" not in details
        assert (await collect(stub, small_request(max_new_tokens=4, block_size=4)))[-1].HasField("final")
