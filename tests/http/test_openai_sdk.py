"""The OpenAI Python SDK (sync, async, streaming) against a real server on a loopback port."""

from __future__ import annotations

import grpc
import openai
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

from tests.http.support import ServerThread, extension

FAST = {"block_size": 4, "mcmc_steps": 2}


def client(server: ServerThread, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, **options)  # type: ignore[arg-type]


def test_completion_has_openai_shape_and_the_model_fingerprint(http_server: ServerThread) -> None:
    result = client(http_server).completions.create(
        model="toy-test", prompt="ab", max_tokens=8, seed=5, n=3, extra_body=FAST
    )
    assert result.object == "text_completion"
    assert result.model == "toy-test" and result.system_fingerprint == "toy-test-v1"
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in result.choices)
    assert all(set(c.text) <= set("abc? ") for c in result.choices)
    answers = extension(result)["answers"]
    assert result.usage is not None and result.usage.prompt_tokens == 2
    # completion_tokens counts every choice's tokens (the text may be shorter by the EOS token)
    assert result.usage.completion_tokens >= sum(len(c.text) for c in result.choices)
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert [a["seed"] for a in answers] == [5, 5, 5]


def test_the_same_seed_reproduces_the_answer_and_another_seed_differs(http_server: ServerThread) -> None:
    sdk = client(http_server)
    texts = [
        [
            c.text
            for c in sdk.completions.create(
                model="toy-test", prompt="ab", max_tokens=24, seed=seed, n=2
            ).choices
        ]
        for seed in (11, 11, 12)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]  # 24 tokens over 5 symbols: equal draws are practically impossible


def test_extra_body_fields_reach_the_sampler(http_server: ServerThread) -> None:
    sdk = client(http_server)
    result = sdk.completions.create(
        model="toy-test",
        prompt="ab",
        max_tokens=12,
        seed=3,
        extra_body={"block_size": 4, "mcmc_steps": 3, "alpha": 2.0, "token_budget": 500},
    )
    answer = extension(result)["answers"][0]
    assert answer["mcmc_steps"] == 3 * 3  # 3 blocks of 4 tokens, 3 steps each: the knobs were used
    greedy = sdk.completions.create(
        model="toy-test", prompt="ab", max_tokens=6, extra_body={"method": "greedy"}
    )
    assert extension(greedy)["answers"][0]["mcmc_steps"] == 0
    assert greedy.choices[0].text == "cabcab"  # the toy table's argmax path after "b"


def test_stream_sends_no_text_before_the_answer_is_final_and_usage_matches(http_server: ServerThread) -> None:
    sdk = client(http_server)
    request = {"model": "toy-test", "prompt": "ab", "max_tokens": 16, "seed": 9, "n": 2, "extra_body": FAST}
    chunks = list(sdk.completions.create(stream=True, stream_options={"include_usage": True}, **request))  # type: ignore[call-overload]
    progress = [c for c in chunks if extension(c).get("progress")]
    assert len(progress) >= 2 * 4  # every block of both chains reported
    texts = [choice.text for c in chunks for choice in c.choices if choice.text]
    first_text = next(i for i, c in enumerate(chunks) if any(ch.text for ch in c.choices))
    assert all(not any(ch.text for ch in c.choices) for c in chunks[:first_text])
    assert first_text > chunks.index(progress[-1])  # text only after the last progress chunk
    plain = sdk.completions.create(**request)  # type: ignore[call-overload]
    assert texts == [c.text for c in plain.choices]
    assert chunks[-1].usage is not None and plain.usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    reasons = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
    assert reasons == {c.index: c.finish_reason for c in plain.choices}


def test_chat_completion_sync_async_and_stream(start_http: object) -> None:
    from tests.http.support import FINAL_ANSWER, ScriptedChatEngine

    server: ServerThread = start_http(ScriptedChatEngine())  # type: ignore[operator]
    sdk = client(server)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather?"},
    ]
    messages.append({"role": "tool", "content": "sunny", "tool_call_id": "x"})  # type: ignore[typeddict-item]
    # A tool result without tools is not a chat role the template knows: refused by name.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="tiny-scripted", messages=messages)  # type: ignore[arg-type]
    assert refused.value.body["param"] == "messages[2].role"  # type: ignore[index]

    plain = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "Weather? <tool_response>"},
    ]
    result = sdk.chat.completions.create(
        model="tiny-scripted", messages=plain, max_completion_tokens=40, seed=1
    )  # type: ignore[arg-type]
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == FINAL_ANSWER
    assert result.choices[0].finish_reason == "stop"
    assert result.system_fingerprint == "tiny-scripted-v1"

    async def async_call() -> str | None:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as aclient:
            r = await aclient.chat.completions.create(model="tiny-scripted", messages=plain, max_tokens=40)  # type: ignore[arg-type]
            return r.choices[0].message.content

    import asyncio

    assert asyncio.run(async_call()) == FINAL_ANSWER
    stream = sdk.chat.completions.create(model="tiny-scripted", messages=plain, max_tokens=40, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FINAL_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]


async def test_async_stream_and_models(http_server: ServerThread) -> None:
    async with openai.AsyncOpenAI(base_url=http_server.base_url, api_key="x", max_retries=0) as sdk:
        models = await sdk.models.list()
        assert [m.id for m in models.data] == ["toy-test"]
        stream = await sdk.completions.create(
            model="toy-test", prompt="ab", max_tokens=8, stream=True, seed=2, extra_body=FAST
        )
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        again = await sdk.completions.create(
            model="toy-test", prompt="ab", max_tokens=8, seed=2, extra_body=FAST
        )
        assert text == again.choices[0].text


def test_tool_call_round_trip_on_the_tiny_template(start_http: object) -> None:
    from tests.http.support import FINAL_ANSWER, WEATHER_TOOL, ScriptedChatEngine

    server: ServerThread = start_http(ScriptedChatEngine())  # type: ignore[operator]
    sdk = client(server)
    messages: list[dict[str, object]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.chat.completions.create(
        model="tiny-scripted", messages=messages, tools=[WEATHER_TOOL], max_tokens=200
    )  # type: ignore[arg-type, list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = sdk.chat.completions.create(
        model="tiny-scripted", messages=messages, tools=[WEATHER_TOOL], max_tokens=200
    )  # type: ignore[arg-type, list-item]
    assert second.choices[0].message.content == FINAL_ANSWER and second.choices[0].finish_reason == "stop"


def test_tools_on_a_model_without_tool_support_are_refused_by_name(http_server: ServerThread) -> None:
    from tests.http.support import WEATHER_TOOL

    with pytest.raises(openai.BadRequestError) as refused:
        client(http_server).chat.completions.create(
            model="toy-test",
            messages=[{"role": "user", "content": "ab"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    assert refused.value.body["param"] == "tools"  # type: ignore[index]
    assert refused.value.status_code == 400


def test_errors_map_to_the_sdk_exception_classes(start_http: object) -> None:
    from tests.server.support import toy_engine

    auth: ServerThread = start_http(toy_engine(), auth_tokens={"tok-a": "tenant-a"}, auth_token="shared")  # type: ignore[operator]
    with pytest.raises(openai.AuthenticationError):
        client(auth).completions.create(model="toy-test", prompt="ab", max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auth.base_url, api_key="wrong", max_retries=0).models.list()
    tenant_client = openai.OpenAI(base_url=auth.base_url, api_key="tok-a", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        tenant_client.completions.create(
            model="toy-test", prompt="ab", max_tokens=4, extra_body={"tenant": "tenant-b"}
        )
    assert denied.value.body["param"] == "tenant"  # type: ignore[index]
    assert tenant_client.completions.create(model="toy-test", prompt="ab", max_tokens=4).choices
    with pytest.raises(openai.NotFoundError):
        tenant_client.completions.create(model="gpt-4o", prompt="ab", max_tokens=4)

    busy: ServerThread = start_http(toy_engine(delay_s=0.05), max_concurrent_requests=1, max_queue=0)  # type: ignore[operator]
    sdk = client(busy)
    import threading

    started = threading.Event()

    def hold() -> None:
        started.set()
        sdk.completions.create(model="toy-test", prompt="ab", max_tokens=12, extra_body={"method": "sample"})

    holder = threading.Thread(target=hold)
    holder.start()
    started.wait()
    import time

    deadline = time.monotonic() + 10
    while busy.running.servicer.admission.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as overloaded:
        sdk.completions.create(model="toy-test", prompt="ab", max_tokens=4)
    assert overloaded.value.response.headers["retry-after"] == "1"
    holder.join(30)


def test_a_loading_model_answers_503_and_ready_says_so() -> None:
    import httpx
    from powersampling.server.app import serve

    from tests.server.support import SlowStartEngine

    engine = SlowStartEngine()
    import asyncio
    import threading

    from powersampling.config import ServerConfig
    from powersampling.telemetry.base import NoTelemetry

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = ServerConfig(host="127.0.0.1", port=0, http_port=0)
    running = asyncio.run_coroutine_threadsafe(
        serve(config, engine=engine, telemetry=NoTelemetry()), loop
    ).result(10)
    try:
        assert running.http_url is not None
        ready = httpx.get(running.http_url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert httpx.get(running.http_url + "/health").status_code == 200
        with pytest.raises(openai.InternalServerError) as unavailable:
            openai.OpenAI(base_url=running.http_url + "/v1", api_key="x", max_retries=0).completions.create(
                model="toy-slow-start", prompt="ab", max_tokens=4
            )
        assert unavailable.value.status_code == 503
        loop.call_soon_threadsafe(engine.release)
        asyncio.run_coroutine_threadsafe(running.wait_ready(10), loop).result(10)
        assert httpx.get(running.http_url + "/ready").status_code == 200
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_grpc_and_http_share_one_engine_and_one_admission(http_server: ServerThread) -> None:
    with grpc.insecure_channel(http_server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = list(
            stub.Reason(pb.ReasonRequest(text="ab", max_new_tokens=8, seed=4, block_size=4, mcmc_steps=2))
        )
    grpc_text = events[-1].final.answers[0].text
    http_text = (
        client(http_server)
        .completions.create(model="toy-test", prompt="ab", max_tokens=8, seed=4, extra_body=FAST)
        .choices[0]
        .text
    )
    assert grpc_text == http_text
