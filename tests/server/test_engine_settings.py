"""Engine settings of the server: from the config to the engine it builds, and back out through Describe."""

from __future__ import annotations

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.config import ServerConfig
from powersampling.server import serve

from tests.server.support import no_server_environment  # noqa: F401


@pytest.mark.slow  # builds (once) and loads the tiny model: several seconds
async def test_engine_settings_reach_the_engine_and_describe() -> None:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        engine="torch",
        model="tiny-random",
        device="cpu",
        engine_max_batch_size=3,
        torch_prefix_cache_tokens=64,
    )
    running = await serve(config)
    try:
        await running.wait_ready(120)
        engine = running.engine
        assert engine is not None and getattr(engine, "max_batch_size", None) == 3
        async with grpc.aio.insecure_channel(running.target) as channel:
            description = await pb_grpc.ReasoningServiceStub(channel).Describe(pb.DescribeRequest())
        assert dict(description.engine_settings) == {"max_batch_size": "3", "prefix_cache_tokens": "64"}
        assert engine.info.extra["prefix_cache_tokens"] == "64"
    finally:
        await running.stop(0)
