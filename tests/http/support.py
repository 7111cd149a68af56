"""Helpers of the HTTP API tests: a real server (gRPC and HTTP listeners) on loopback ports, run on
its own event loop in a thread, so that synchronous clients (the OpenAI SDK, LangChain) and
asynchronous ones can both call it; and a scripted chat engine on the tiny model's tokenizer."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.engines.hf_tokenizer import HuggingFaceTokenizer
from powersampling.engines.toy import ToyEngine
from powersampling.models.tiny import build_tiny_tokenizer
from powersampling.server.app import RunningServer, serve
from powersampling.telemetry.base import NoTelemetry

from tests.server.support import toy_engine

T = TypeVar("T")


class ServerThread:
    """`serve(...)` with http_port=0 on a loop in a daemon thread; `stop()` drains and closes."""

    def __init__(
        self, engine: Engine | None = None, *, cache: Any = None, telemetry: Any = None, **settings: Any
    ):
        settings.setdefault("drain_timeout_s", 5.0)
        settings.setdefault("http_port", 0)
        self.config = ServerConfig(host="127.0.0.1", port=0, **settings)
        self.engine = engine if engine is not None else toy_engine()
        self._cache = cache
        self._telemetry = telemetry or NoTelemetry()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="http-test-server", daemon=True)
        self._thread.start()
        self.running: RunningServer = self.call(self._start)

    async def _start(self) -> RunningServer:
        running = await serve(self.config, engine=self.engine, cache=self._cache, telemetry=self._telemetry)
        await running.wait_ready(10)
        return running

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout_s)

    async def acall(self, make: Callable[[], Awaitable[T]]) -> T:
        """`call` from another event loop (an async test)."""
        future = asyncio.run_coroutine_threadsafe(make(), self.loop)  # type: ignore[arg-type]
        return await asyncio.wrap_future(future)

    @property
    def base_url(self) -> str:
        """What the OpenAI SDK's base_url takes."""
        assert self.running.http_url is not None
        return self.running.http_url + "/v1"

    @property
    def target(self) -> str:
        return self.running.target

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        try:
            self.call(lambda: self.running.stop(drain_timeout_s))
            self.call(self.engine.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


# --- A chat engine that follows a script, on the tiny model's tokenizer and chat template ------------

TOOL_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
FINAL_ANSWER = "It is sunny in Paris."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class ScriptedChatEngine(HuggingFaceTokenizer, ToyEngine):
    """A toy model over the tiny model's vocabulary that answers a chat by script.

    The last assistant turn of the prompt decides the answer: a tool call when the conversation has no
    tool result yet, else FINAL_ANSWER. Every token of the answer has probability ~1, so power sampling
    returns it whatever the seed: the test is about the plumbing, not the model.
    """

    def __init__(self) -> None:
        tokenizer = build_tiny_tokenizer()
        self._init_tokenizer(tokenizer, "tiny-scripted")
        self._eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self._header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
        self._tool_call_ids = tokenizer(TOOL_CALL, add_special_tokens=False)["input_ids"]
        self._answer_ids = tokenizer(FINAL_ANSWER, add_special_tokens=False)["input_ids"]
        vocab = len(tokenizer)
        super().__init__(
            vocab_size=vocab,
            eos_id=self._eos,
            next_token_logprobs=self._next,
            name="tiny-scripted",
            fingerprint="tiny-scripted-v1",
            max_context_tokens=4096,
        )

    def _next(self, prefix: tuple[int, ...]) -> list[float]:
        start = max(i for i, t in enumerate(prefix) if t == self._im_start)
        generated = prefix[start + 1 + len(self._header) :]
        prompt_text = self.detokenize(prefix[:start])
        script = self._answer_ids if "<tool_response>" in prompt_text else self._tool_call_ids
        target = script[len(generated)] if len(generated) < len(script) else self._eos
        row = [-60.0] * self.vocab_size
        row[target] = 0.0
        return row


def sse_events(text: str) -> list[Any]:
    """The JSON payloads of an SSE body, "[DONE]" kept as a string."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def extension(obj: Any) -> dict[str, Any]:
    """The `powersampling` field of an SDK response or chunk ({} when absent or null)."""
    return dict((getattr(obj, "model_extra", None) or {}).get("powersampling") or {})
