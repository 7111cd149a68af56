"""An agent framework (LangChain's ChatOpenAI) drives the service as its model over the HTTP API."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.http.support import FINAL_ANSWER, ScriptedChatEngine, ServerThread

langchain_openai = pytest.importorskip("langchain_openai")
messages_module = pytest.importorskip("langchain_core.messages")
tools_module = pytest.importorskip("langchain_core.tools")


def test_langchain_chat_model_with_one_tool_call_round_trip(start_http: Callable[..., ServerThread]) -> None:
    server = start_http(ScriptedChatEngine())

    @tools_module.tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}, 21 C"

    model = langchain_openai.ChatOpenAI(
        model="tiny-scripted",
        base_url=server.base_url,
        api_key="unused",
        max_retries=0,
        max_tokens=200,
        seed=7,
        extra_body={"block_size": 64, "mcmc_steps": 1},
    )
    agent = model.bind_tools([get_weather])
    history: list[object] = [messages_module.HumanMessage("What is the weather in Paris?")]
    first = agent.invoke(history)
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    assert first.tool_calls[0]["args"] == {"city": "Paris"}
    history.append(first)
    for call in first.tool_calls:  # run the tool, as an agent loop does
        history.append(messages_module.ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = agent.invoke(history)
    assert final.content == FINAL_ANSWER and not final.tool_calls
    assert final.response_metadata["finish_reason"] == "stop"
    assert final.usage_metadata is not None and final.usage_metadata["output_tokens"] > 0


def test_langchain_streams_the_final_answer(start_http: Callable[..., ServerThread]) -> None:
    server = start_http(ScriptedChatEngine())
    model = langchain_openai.ChatOpenAI(
        model="tiny-scripted", base_url=server.base_url, api_key="unused", max_retries=0, max_tokens=200
    )
    conversation = [messages_module.HumanMessage("Hello <tool_response>")]
    pieces = [chunk.content for chunk in model.stream(conversation)]
    assert "".join(pieces) == FINAL_ANSWER
