"""Cancellation, deadlines, health and graceful shutdown: the engine's work stops when the call does."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.server.app import SERVICE_NAME, RunningServer

from tests.server.support import (
    SlowStartEngine,
    StartServer,
    collect,
    rpc_error,
    small_request,
    toy_engine,
    wait_until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def long_request() -> pb.ReasonRequest:
    """Minutes of work on the slow toy engine if nothing stopped it."""
    return small_request(max_new_tokens=400, block_size=10, mcmc_steps=10)


async def wait_for_engine_to_settle(engine: object, quiet_s: float = 0.25, timeout_s: float = 5.0) -> int:
    """Wait until the engine's token counter stops moving; returns it."""
    table = engine.table  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    before = table.calls
    while True:
        await asyncio.sleep(quiet_s)
        if table.calls == before:
            return before
        if loop.time() > deadline:
            raise AssertionError(f"the engine kept working: {table.calls} calls and counting")
        before = table.calls


async def test_cancelling_the_stream_stops_engine_work(start_server: StartServer) -> None:
    engine = toy_engine(delay_s=0.002)
    server = await start_server(engine)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = pb_grpc.ReasoningServiceStub(channel).Reason(long_request())
        events = aiter(call)
        assert (await anext(events)).HasField("started")
        assert (await anext(events)).HasField("progress")
        call.cancel()
        await wait_until(lambda: server.servicer.admission.running == 0)
        settled = await wait_for_engine_to_settle(engine)
        await asyncio.sleep(0.3)
        assert engine.table.calls == settled  # type: ignore[attr-defined]
        assert settled < 20_000  # a full run would be orders of magnitude more
        # The server keeps serving.
        events_after = await collect(pb_grpc.ReasoningServiceStub(channel), small_request())
        assert events_after[-1].HasField("final")


async def test_deadline_is_honoured_and_stops_engine_work(start_server: StartServer) -> None:
    engine = toy_engine(delay_s=0.002)
    server = await start_server(engine)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        loop = asyncio.get_running_loop()
        began = loop.time()
        error = await rpc_error(stub, long_request(), timeout=0.5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - began < 3.0
        await wait_until(lambda: server.servicer.admission.running == 0)
        settled = await wait_for_engine_to_settle(engine)
        await asyncio.sleep(0.3)
        assert engine.table.calls == settled  # type: ignore[attr-defined]


async def test_health_is_not_serving_until_the_engine_is_ready(start_server: StartServer) -> None:
    engine = SlowStartEngine()
    server = await start_server(engine, wait_ready=False)
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == NOT_SERVING
        stub = pb_grpc.ReasoningServiceStub(channel)
        error = await rpc_error(stub, small_request())
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "loading" in (error.details() or "")
        with_describe = stub.Describe(pb.DescribeRequest())
        try:
            await with_describe
            raise AssertionError("Describe answered before the engine was ready")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE

        engine.release()
        await server.wait_ready(5)
        for service in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == SERVING
        assert (await collect(stub, small_request()))[-1].HasField("final")


async def test_graceful_shutdown_lets_an_in_flight_stream_finish(start_server: StartServer) -> None:
    engine = toy_engine(delay_s=0.001)
    server = await start_server(engine, drain_timeout_s=20)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        watched = aiter(watch)
        assert (await anext(watched)).status == SERVING

        call = stub.Reason(small_request(max_new_tokens=60, block_size=20, mcmc_steps=4))
        events = aiter(call)
        assert (await anext(events)).HasField("started")
        stopping = asyncio.create_task(server.stop())

        assert (await anext(watched)).status == NOT_SERVING  # load balancers see the drain
        watch.cancel()
        refused = await rpc_error(stub, small_request())
        assert refused.code() == grpc.StatusCode.UNAVAILABLE

        rest = [event async for event in events]
        assert rest[-1].HasField("final") and rest[-1].final.answers[0].token_ids
        await asyncio.wait_for(stopping, 10)


async def test_calls_past_the_drain_timeout_are_cancelled(start_server: StartServer) -> None:
    engine = toy_engine(delay_s=0.002)
    server: RunningServer = await start_server(engine, drain_timeout_s=0.3)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = pb_grpc.ReasoningServiceStub(channel).Reason(long_request())
        events = aiter(call)
        assert (await anext(events)).HasField("started")
        await asyncio.wait_for(server.stop(), 5)
        try:
            async for _ in events:
                pass
            raise AssertionError("the stream finished although the drain timed out")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        settled = await wait_for_engine_to_settle(engine)
        await asyncio.sleep(0.3)
        assert engine.table.calls == settled  # type: ignore[attr-defined]
