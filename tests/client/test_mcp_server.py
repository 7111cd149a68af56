"""The MCP server, driven end to end by a real MCP client over stdio against a live server."""

from __future__ import annotations

import json
import sys

import pytest

from tests.client.conftest import ThreadedServer

pytest.importorskip("mcp")  # the client's `mcp` extra


async def test_an_mcp_client_calls_the_reason_tool(
    server: ThreadedServer, client_environment: dict[str, str]
) -> None:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "powersampling_client.mcp_server", "--target", server.target, "--timeout-s", "30"],
        env=client_environment,
    )
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = (await session.list_tools()).tools
        (tool,) = [t for t in tools if t.name == "reason"]
        assert tool.description and "prompt" in tool.input_schema["properties"]
        assert tool.input_schema["required"] == ["prompt"]

        arguments = {"prompt": "abc?", "seed": 4, "max_new_tokens": 12, "mcmc_steps": 2}
        result = await session.call_tool("reason", arguments)
        assert not result.is_error, result.content
        output = json.loads(result.content[0].text)
        assert output["answer"] and output["seed"] == 4 and output["model"] == "toy-test"
        if result.structured_content is not None:
            assert result.structured_content["answer"] == output["answer"]

        refused = await session.call_tool("reason", {**arguments, "token_budget": 5})
        assert refused.is_error
        assert "token_budget" in refused.content[0].text
