"""Admission control: bounded concurrency and queue; a burst beyond them is refused at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.server.admission import AdmissionControl
from powersampling.serving.errors import ServerOverloaded

from tests.server.support import RecordingTelemetry, StartServer, collect, small_request, toy_engine


async def test_a_burst_beyond_capacity_is_refused_while_admitted_requests_complete(
    start_server: StartServer,
) -> None:
    telemetry = RecordingTelemetry()
    engine = toy_engine(delay_s=0.001)
    server = await start_server(engine, telemetry=telemetry, max_concurrent_requests=2, max_queue=2)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        request = small_request(max_new_tokens=12, block_size=6, mcmc_steps=2)
        outcomes = await asyncio.gather(*(collect(stub, request) for _ in range(8)), return_exceptions=True)
    completed = [o for o in outcomes if isinstance(o, list)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(completed) + len(refused) == 8
    assert len(completed) >= 4  # two running and two queued at least
    assert refused, "nothing was refused"
    assert all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert all("capacity" in (o.details() or "") for o in refused)
    assert all(events[-1].HasField("final") for events in completed)
    assert telemetry.rejections == ["queue_full"] * len(refused)
    assert max(telemetry.queue_depths) == 2 and telemetry.queue_depths[-1] == 0
    assert server.servicer.admission.running == 0 and server.servicer.admission.waiting == 0


async def test_slots_are_handed_over_in_arrival_order() -> None:
    depths: list[int] = []
    admission = AdmissionControl(1, 3, on_queue_depth=depths.append)
    order: list[int] = []
    gate = asyncio.Event()

    async def request(i: int) -> None:
        async with admission.slot():
            order.append(i)
            await gate.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert (admission.running, admission.waiting) == (1, 3)
    with pytest.raises(ServerOverloaded):
        async with admission.slot():
            pass
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (admission.running, admission.waiting) == (0, 0)
    assert depths == [1, 2, 3, 2, 1, 0]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = AdmissionControl(1, 2)
    gate = asyncio.Event()

    async def hold() -> None:
        async with admission.slot():
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert admission.waiting == 1
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert admission.waiting == 0
    gate.set()
    await holder
    assert admission.running == 0
    async with admission.slot():  # the slot is free again
        assert admission.running == 1


async def test_a_zero_queue_refuses_everything_beyond_the_running_requests() -> None:
    rejections: list[str] = []
    admission = AdmissionControl(1, 0, on_rejection=rejections.append)
    async with admission.slot():
        with pytest.raises(ServerOverloaded, match="retry later"):
            async with admission.slot():
                pass
    assert rejections == ["queue_full"]
