"""The server reports to telemetry at the right points: cache status, every sampler event, first
message sent, finish (with results or the error), queue depth and rejections, interceptors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.events import BlockFinished, ChainStarted, McmcStepTaken
from powersampling.results import CacheStatus

from tests.server.support import (
    RecordingTelemetry,
    StartServer,
    collect,
    small_request,
    toy_engine,
    wait_until,
)


class CountingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.methods.append(handler_call_details.method)  # type: ignore[attr-defined]
        return await continuation(handler_call_details)


async def test_observer_sees_the_whole_request(start_server: StartServer) -> None:
    interceptor = CountingInterceptor()
    telemetry = RecordingTelemetry(interceptors=[interceptor])
    server = await start_server(telemetry=telemetry)
    async with grpc.aio.insecure_channel(server.target) as channel:
        events = await collect(pb_grpc.ReasoningServiceStub(channel), small_request(tenant="t1"))
    assert interceptor.methods == ["/powersampling.v1.ReasoningService/Reason"]

    ((attributes, observer),) = telemetry.requests
    assert attributes["request_id"] == events[0].started.request_id
    assert attributes["model"] == "toy-test" and attributes["engine"] == "toy"
    assert attributes["prompt_tokens"] == 4 and attributes["tenant"] == "t1"
    assert attributes["params"].seed == 7 and attributes["params"].block_size == 4

    kinds = [kind for kind, _ in observer.calls]
    assert kinds[0] == "cache_status" and observer.calls[0][1] is CacheStatus.DISABLED
    assert kinds[-1] == "finish" and kinds.count("first_event_sent") == 1
    sampler_events = [value for kind, value in observer.calls if kind == "event"]
    assert isinstance(sampler_events[0], ChainStarted)
    assert any(isinstance(e, McmcStepTaken) for e in sampler_events)
    assert sum(isinstance(e, BlockFinished) for e in sampler_events) == len(events) - 2
    results, error = observer.calls[-1][1]
    assert error is None and [r.text for r in results] == [a.text for a in events[-1].final.answers]


async def test_observer_is_told_about_a_cancelled_request(start_server: StartServer) -> None:
    telemetry = RecordingTelemetry()
    server = await start_server(toy_engine(delay_s=0.002), telemetry=telemetry)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = pb_grpc.ReasoningServiceStub(channel).Reason(small_request(max_new_tokens=300, block_size=10))
        await anext(aiter(call))
        call.cancel()
        observer = telemetry.requests[0][1]
        await wait_until(lambda: observer.calls[-1][0] == "finish")
    results, error = observer.calls[-1][1]
    assert results is None and isinstance(error, asyncio.CancelledError)
