"""Method smc through the client library and the agent tools, against a real server."""

from __future__ import annotations

import json
import sys

import pytest
from powersampling_client import (
    AsyncPowerSamplingClient,
    PowerSamplingClient,
    PowerSamplingError,
    Progress,
    ReasonResult,
    SmcProgress,
    SmcStats,
    Started,
)
from powersampling_client._convert import build_request
from powersampling_client.tools import REASON_TOOL, handle_tool_call, parse_tool_arguments

from tests.client.conftest import ThreadedServer

SMC = {"method": "smc", "max_new_tokens": 12, "particles": 4, "chunk_size": 4, "seed": 9}


def test_smc_options_become_request_fields() -> None:
    request = build_request(
        "abc?", method="smc", particles=8, sweeps=3, resample_threshold=0.25, chunk_size=16, ramp_tokens=5
    )
    assert request.method == 5  # METHOD_SMC
    assert (request.particles, request.sweeps, request.chunk_size, request.ramp_tokens) == (8, 3, 16, 5)
    assert request.resample_threshold == 0.25
    assert not build_request("abc?", method="smc").HasField("particles")  # unset: the server's default
    with pytest.raises(PowerSamplingError) as info:
        build_request("abc?", method="smc", particles=-1)
    assert info.value.field == "particles"


def test_stream_of_an_smc_request(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        started, *progress, final = list(client.stream("abc?", sweeps=2, **SMC))
    assert isinstance(started, Started) and isinstance(final, ReasonResult)
    assert started.params.method == "smc" and started.params.particles == 4 and started.params.sweeps == 2
    assert started.params.resample_threshold == 0.5 and started.params.chunk_size == 4
    assert started.num_blocks == 6
    assert progress and all(isinstance(p, Progress) and isinstance(p.smc, SmcProgress) for p in progress)
    sweeps = [p for p in progress if p.smc is not None and p.smc.sweep_finished]
    assert [p.smc.sweep_index for p in sweeps if p.smc] == [0, 1]
    assert all(p.smc.log_z_hat is not None for p in sweeps if p.smc)
    stats = final.answers[0].stats.smc
    assert isinstance(stats, SmcStats) and (stats.particles, stats.sweeps) == (4, 2)
    assert 0.0 < stats.ess_min <= 1.0 and final.answers[0].stats.mcmc_steps == 1
    assert final.text == sweeps[-1].text


def test_other_methods_have_no_smc_values(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        started, *progress, final = list(client.stream("abc?", max_new_tokens=8, block_size=4, seed=1))
        info = client.describe()
    assert isinstance(started, Started) and started.params.particles is None
    assert all(isinstance(p, Progress) and p.smc is None for p in progress)
    assert isinstance(final, ReasonResult) and final.answers[0].stats.smc is None
    # Describe shows what an smc request takes, and the limits.
    assert (info.defaults.particles, info.defaults.sweeps, info.defaults.chunk_size) == (16, 1, 32)
    assert info.defaults.resample_threshold == 0.5 and info.defaults.ramp_tokens == 0
    assert (info.limits.max_particles, info.limits.max_sweeps) == (256, 64)


def test_bad_smc_options_name_the_field(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        for options, field in [
            ({**SMC, "particles": 0}, "particles"),
            ({**SMC, "resample_threshold": 2.0}, "resample_threshold"),
            ({**SMC, "block_size": 4}, "block_size"),
            ({"method": "power", "sweeps": 2}, "sweeps"),
        ]:
            with pytest.raises(PowerSamplingError) as info:
                client.reason("abc?", **options)  # type: ignore[arg-type]
            assert info.value.field == field, info.value


async def test_async_client_runs_smc(server: ThreadedServer) -> None:
    async with AsyncPowerSamplingClient(server.target) as client:
        result = await client.reason("abc?", **SMC)  # type: ignore[arg-type]
    assert result.answers[0].stats.smc is not None and result.answers[0].seed == 9


def test_the_tool_offers_smc_and_reports_its_statistics(server: ThreadedServer) -> None:
    properties = REASON_TOOL["function"]["parameters"]["properties"]
    assert "smc" in properties["method"]["enum"]
    assert properties["particles"]["minimum"] == 1 and properties["sweeps"]["minimum"] == 1
    arguments = {
        "prompt": "abc?",
        "method": "smc",
        "particles": 4,
        "sweeps": 2,
        "seed": 2,
        "max_new_tokens": 12,
    }
    assert parse_tool_arguments(arguments)[1]["particles"] == 4
    with PowerSamplingClient(server.target) as client:
        output = json.loads(handle_tool_call(client, arguments))
        refused = json.loads(handle_tool_call(client, {"prompt": "abc?", "particles": 4}))
    assert output["smc"]["particles"] == 4 and output["smc"]["sweeps"] == 2 and output["mcmc_steps"] == 1
    assert refused["error"]["field"] == "particles"  # the default method is power


async def test_the_mcp_tool_takes_smc_arguments(
    server: ThreadedServer, client_environment: dict[str, str]
) -> None:
    pytest.importorskip("mcp")
    from mcp import ClientSession, StdioServerParameters, stdio_client

    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "powersampling_client.mcp_server", "--target", server.target, "--timeout-s", "30"],
        env=client_environment,
    )
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        (tool,) = [t for t in (await session.list_tools()).tools if t.name == "reason"]
        assert {"particles", "sweeps"} <= tool.input_schema["properties"].keys()
        arguments = {"prompt": "abc?", "method": "smc", "particles": 3, "seed": 4, "max_new_tokens": 8}
        result = await session.call_tool("reason", arguments)
        assert not result.is_error, result.content
        assert json.loads(result.content[0].text)["smc"]["particles"] == 3
