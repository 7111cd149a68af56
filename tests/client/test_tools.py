"""The agent tool: its JSON schema and handler, against a real server."""

from __future__ import annotations

import json

import pytest
from powersampling_client import AsyncPowerSamplingClient, PowerSamplingClient
from powersampling_client.tools import REASON_TOOL, handle_tool_call, handle_tool_call_async

from tests.client.conftest import ThreadedServer

ARGS = {"prompt": "abc?", "seed": 3, "max_new_tokens": 12, "mcmc_steps": 2}


def test_the_schema_is_an_openai_function_tool() -> None:
    assert json.loads(json.dumps(REASON_TOOL)) == REASON_TOOL
    function = REASON_TOOL["function"]
    assert REASON_TOOL["type"] == "function" and function["name"] == "reason" and function["description"]
    parameters = function["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["prompt"]
    assert parameters["additionalProperties"] is False
    assert all(p.get("description") for p in parameters["properties"].values())
    assert parameters["properties"]["method"]["enum"] == ["power", "smc", "sample", "low-temp", "greedy"]


def test_a_tool_call_returns_the_answer(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        output = json.loads(handle_tool_call(client, json.dumps(ARGS)))
        again = json.loads(handle_tool_call(client, ARGS))
        several = json.loads(handle_tool_call(client, {**ARGS, "n": 2, "stop": ["?"]}))
    assert output["answer"] == again["answer"] and output["seed"] == 3
    assert output["finish_reason"] in ("eos", "length") and output["model"] == "toy-test"
    assert 0.0 <= output["acceptance_rate"] <= 1.0 and output["tokens_spent"] > 0
    assert len(several["answers"]) == 2


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ("{not json", "arguments"),
        ("[1, 2]", "arguments"),
        ({"seed": 1}, "prompt"),
        ({"prompt": "abc", "temperature": 2}, "temperature"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "abc", "n": "two"}, "n"),
        ({"prompt": "abc", "alpha": True}, "alpha"),
        ({"prompt": "abc", "method": "fast"}, "method"),
        ({"prompt": "abc", "stop": [1]}, "stop"),
        ({"prompt": "abc", "alpha": 0.5}, "alpha"),  # well-typed: the server refuses it
        ({"prompt": "   "}, "text"),
    ],
)
def test_a_bad_tool_call_returns_an_error_the_model_can_read(
    server: ThreadedServer, arguments: object, field: str
) -> None:
    with PowerSamplingClient(server.target) as client:
        output = json.loads(handle_tool_call(client, arguments))  # type: ignore[arg-type]
    assert output["error"]["code"] == "INVALID_ARGUMENT"
    assert output["error"]["field"] == field and output["error"]["message"].startswith(f"{field}: ")


async def test_the_async_handler(server: ThreadedServer) -> None:
    async with AsyncPowerSamplingClient(server.target) as client:
        output = json.loads(await handle_tool_call_async(client, ARGS))
        error = json.loads(await handle_tool_call_async(client, {"prompt": "abc", "mcmc_steps": -1}))
    assert output["answer"]
    assert error["error"]["field"] == "mcmc_steps"
