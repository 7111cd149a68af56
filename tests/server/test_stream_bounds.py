"""Clients that never read: their streams end after stream_idle_timeout_s and free their slots."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.config import ServerConfig
from powersampling.events import BlockFinished, ChainState
from powersampling.server.app import keepalive_options
from powersampling.server.servicer import MAX_PENDING_EVENTS, _EventBuffer

from tests.server.support import StartServer, collect, small_request, toy_engine, wait_until

# 4000 one-token blocks: every progress event carries the chain's whole text, ~8 MB in all, far
# more than gRPC's flow-control window, so the server's writes block once the client stops reading.
FLOOD = {"max_new_tokens": 4000, "block_size": 1, "mcmc_steps": 0, "seed": 11}
IDLE_TIMEOUT_S = 1.0


async def _stuck_calls(stub: pb_grpc.ReasoningServiceStub, count: int) -> list[grpc.aio.UnaryStreamCall]:
    """`count` Reason calls that are sent, answered with headers, and then never read."""
    calls = [stub.Reason(small_request(**FLOOD)) for _ in range(count)]
    for call in calls:
        await call.initial_metadata()
    return calls


async def test_clients_that_never_read_do_not_stop_a_fifth(start_server: StartServer) -> None:
    server = await start_server(max_concurrent_requests=4, max_queue=4, stream_idle_timeout_s=IDLE_TIMEOUT_S)
    async with (
        grpc.aio.insecure_channel(server.target) as stuck_channel,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stuck = await _stuck_calls(pb_grpc.ReasoningServiceStub(stuck_channel), 4)
        await wait_until(lambda: server.servicer.admission.running == 4)
        # The fifth is queued behind four streams that block once the client's window is full (a
        # few seconds of sampling) and end IDLE_TIMEOUT_S later; without the timeout it waits forever.
        # The bound is generous for slow machines: this checks liveness, not speed.
        events = await asyncio.wait_for(
            collect(pb_grpc.ReasoningServiceStub(channel), small_request()), IDLE_TIMEOUT_S + 60
        )
        assert events[-1].HasField("final")
        await wait_until(lambda: server.servicer.admission.running == 0, timeout_s=10)

        # A stuck client that reads at last gets what was sent, then a status naming the setting.
        for call in stuck:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "stream_idle_timeout_s" in (info.value.details() or "")


async def test_a_stuck_stream_holds_bounded_memory_until_its_timeout(start_server: StartServer) -> None:
    """What a blocked stream holds stays bounded: its unsent progress is coalesced to one event.

    gRPC's own send buffer is bounded by flow control (the client's window, a few MB at most, held
    by the transport); this measures what the server adds on top, with tracemalloc.
    """
    engine = toy_engine(delay_s=1e-6)  # memo off (it would hold every prefix), counts its calls
    server = await start_server(engine, max_concurrent_requests=4, max_queue=0, stream_idle_timeout_s=60)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            stuck = await _stuck_calls(stub, 1)
            # Sampling finishes (all 4000 tokens) while the writes stay blocked.
            await wait_until(lambda: engine.table.calls >= 4000, timeout_s=120)  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)  # the last block's event reaches the stream's buffer
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # ~8 MB of progress text and 4000 chain states (~200 MB together) were produced; the stream
        # holds about 1 MB (measured 0.9 MB: a few states, the message being written, gRPC's
        # Python-side objects). The tolerance leaves room for allocator and version noise.
        assert held < 4_000_000, f"{held / 1e6:.1f} MB held by one stuck stream"
        assert server.servicer.admission.running == 1
        for call in stuck:
            call.cancel()
        await wait_until(lambda: server.servicer.admission.running == 0)


async def test_a_stream_older_than_the_max_age_is_ended(start_server: StartServer) -> None:
    server = await start_server(stream_max_age_s=0.5)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        call = stub.Reason(small_request(**FLOOD))
        await call.initial_metadata()
        await wait_until(lambda: server.servicer.admission.running == 0, timeout_s=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "stream_max_age_s" in (info.value.details() or "")
        assert (await collect(stub, small_request()))[-1].HasField("final")


def test_keepalive_policy_follows_the_settings() -> None:
    options = dict(keepalive_options(ServerConfig(keepalive_time_s=30, keepalive_timeout_s=5)))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= 30_000


def _block(chain: int, block: int, *, revised: bool = False) -> BlockFinished:
    state = ChainState(
        chain_index=chain,
        seed=1,
        blocks_done=block + 1,
        token_ids=(1,) * (block + 1),
        logp=(0.0,) * (block + 1),
        logq=(0.0,) * (block + 1),
        ended=False,
        finish_reason=None,
        tokens_spent=block + 1,
        mcmc_steps=0,
        accepted_steps=0,
        changed_steps=0,
        skipped_steps=0,
    )
    return BlockFinished(chain, block, 4000, 0, revised, state)


async def test_a_client_that_fell_behind_costs_one_pending_event_per_chain() -> None:
    buffer = _EventBuffer(MAX_PENDING_EVENTS)
    buffer.put(pb.ReasonEvent(started=pb.Started(request_id="r")))
    for block in range(4000):  # nobody reads: three chains' blocks pile up
        for chain in range(3):
            buffer.put(_block(chain, block, revised=(chain, block) == (1, 10)))
    # Each chain's state holds its whole prefix: keeping 64 of them would cost O(64 x length).
    assert len(buffer) == 1 + 3
    buffer.close()
    items = [item async for item in buffer]
    assert isinstance(items[0], pb.ReasonEvent)
    assert [(i.chain_index, i.block_index) for i in items[1:]] == [(0, 3999), (1, 3999), (2, 3999)]
    assert [i.revised for i in items[1:]] == [False, True, False]  # an unsent revision is kept


async def test_a_reader_that_keeps_up_gets_every_block() -> None:
    buffer = _EventBuffer(MAX_PENDING_EVENTS)
    received = []
    for block in range(200):
        buffer.put(_block(0, block))
        if block % 50 == 49:  # the reader drains now and then, never 64 behind
            async for item in _drain(buffer):
                received.append(item.block_index)
    assert received == list(range(200))


async def _drain(buffer: _EventBuffer) -> AsyncIterator[BlockFinished]:
    iterator = aiter(buffer)
    while len(buffer):
        item = await anext(iterator)
        assert isinstance(item, BlockFinished)
        yield item


async def test_an_idle_stream_ends_cleanly_under_the_telemetry_interceptor(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The OpenTelemetry interceptor wraps the stream: ending it must unwind its span, no errors."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from powersampling.telemetry.otel import setup_telemetry

    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_exporter=exporter)
    try:
        server = await start_server(
            telemetry=telemetry, max_concurrent_requests=1, stream_idle_timeout_s=IDLE_TIMEOUT_S
        )
        async with (
            grpc.aio.insecure_channel(server.target) as stuck_channel,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            with caplog.at_level(logging.WARNING):
                (stuck,) = await _stuck_calls(pb_grpc.ReasoningServiceStub(stuck_channel), 1)
                events = await asyncio.wait_for(
                    collect(pb_grpc.ReasoningServiceStub(channel), small_request()), IDLE_TIMEOUT_S + 60
                )
            assert events[-1].HasField("final")
            stuck.cancel()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, caplog.text
        assert any("stream_idle_timeout_s" in r.getMessage() for r in caplog.records)
    finally:
        telemetry.shutdown()
