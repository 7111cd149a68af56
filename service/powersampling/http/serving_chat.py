"""POST /v1/chat/completions on the serving core: messages (and tools) in, chat completions out."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from powersampling.engines.base import ChatMessage
from powersampling.errors import InvalidArgument
from powersampling.http.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageParam,
    ChunkDelta,
    FinishReason,
    ResponseFunctionCall,
    ResponseToolCall,
)
from powersampling.http.serving_base import (
    FINISH_REASONS,
    Call,
    OpenAIServing,
    Renderer,
    RendererBase,
    info_finished,
    info_progress,
    info_started,
    usage,
)
from powersampling.http.tool_parser import parse_tool_calls
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.serving.request import Identity, RequestLimits, ValidRequest, check_chars


class OpenAIServingChat(OpenAIServing[ChatCompletionRequest]):
    """Chat completions: the messages go through the model's chat template (with the tools, if any)."""

    body_type = ChatCompletionRequest

    def prepare(
        self, body: ChatCompletionRequest, call: Call, limits: RequestLimits, identity: Identity
    ) -> tuple[ValidRequest, Renderer]:
        max_tokens = ("max_tokens", body.max_tokens)
        if body.max_completion_tokens is not None:
            if body.max_tokens is not None and body.max_tokens != body.max_completion_tokens:
                raise InvalidArgument("max_completion_tokens", "differs from max_tokens; send one of them")
            max_tokens = ("max_completion_tokens", body.max_completion_tokens)
        params = self.sampling_params(body, max_tokens, self.core.defaults)
        messages = chat_messages(body.messages)
        check_chars("messages", sum(len(m["content"]) + len(m["role"]) for m in messages), limits)
        tools = tuple(t.model_dump(exclude_none=True) for t in body.tools or ())
        valid = self.valid_request(
            body=body,
            prompt=messages,
            prompt_field="messages",
            chat=True,
            params=params,
            limits=limits,
            identity=identity,
            max_tokens_field=max_tokens[0],
            tools=tools,
        )
        tool_names = {t.function.name for t in body.tools or ()} if body.tool_choice != "none" else set()
        return valid, _ChatRenderer(call, tool_names, n=params.n)


def chat_messages(params: list[ChatMessageParam]) -> list[ChatMessage]:
    """OpenAI messages as the engine's chat messages; errors name messages[i].<field>."""
    if not params:
        raise InvalidArgument("messages", "must hold at least one message")
    messages: list[ChatMessage] = []
    for i, m in enumerate(params):
        where = f"messages[{i}]"
        if isinstance(m.content, list):
            content = "".join(part.text for part in m.content)
        elif m.content is None:
            if m.role != "assistant" or not m.tool_calls:
                raise InvalidArgument(f"{where}.content", "is required for this role")
            content = ""
        else:
            content = m.content
        role = "system" if m.role == "developer" else m.role
        message: ChatMessage = {"role": role, "content": content}
        if m.tool_calls:
            if m.role != "assistant":
                raise InvalidArgument(f"{where}.tool_calls", "only assistant messages carry tool calls")
            message["tool_calls"] = [
                _template_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(m.tool_calls)
            ]
        messages.append(message)
    return messages


def _template_call(where: str, call: Any) -> dict[str, Any]:
    """An OpenAI tool call as chat templates take it (arguments as an object, not JSON text)."""
    try:
        arguments = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
    except json.JSONDecodeError:
        raise InvalidArgument(f"{where}.function.arguments", "is not valid JSON") from None
    if not isinstance(arguments, dict):
        raise InvalidArgument(f"{where}.function.arguments", "must be a JSON object")
    return {
        "type": "function",
        "id": call.id,
        "function": {"name": call.function.name, "arguments": arguments},
    }


class _ChatRenderer(RendererBase):
    """The core's events as chat completion bodies and chunks."""

    id_prefix = "chatcmpl"
    chunk_type = ChatCompletionChunk

    def __init__(self, call: Call, tool_names: set[str], *, n: int) -> None:
        super().__init__(call, n=n)
        self.tool_names = tool_names

    def _message(self, text: str, finish_reason: str) -> tuple[AssistantMessage, FinishReason]:
        reason = FINISH_REASONS.get(finish_reason, "stop")
        if not self.tool_names:
            return AssistantMessage(content=text), reason
        content, calls = parse_tool_calls(text, self.tool_names)
        if not calls:
            return AssistantMessage(content=text), reason
        tool_calls = [
            ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in calls
        ]
        return AssistantMessage(content=content, tool_calls=tool_calls), "tool_calls"

    def response(self, finished: CallFinished) -> ChatCompletionResponse:
        choices = []
        for i, result in enumerate(finished.results):
            message, reason = self._message(result.text, result.finish_reason)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reason))
        return ChatCompletionResponse(
            **self.envelope(),
            choices=choices,
            usage=usage(finished),
            powersampling=info_finished(finished),
        )

    def chunks(self, event: CallEvent) -> list[BaseModel]:
        if isinstance(event, CallStarted):
            opening = [
                ChatChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))
                for i in range(self.n)
            ]
            return [self.chunk(opening, powersampling=info_started(event))]
        if isinstance(event, CallProgress):  # statistics only: the text may still be revised
            return [self.chunk([], powersampling=info_progress(self.call.request_id, event))]
        assert isinstance(event, CallFinished)
        out: list[BaseModel] = []
        reasons: list[FinishReason] = []
        for i, result in enumerate(event.results):
            message, reason = self._message(result.text, result.finish_reason)
            reasons.append(reason)
            calls = None
            if message.tool_calls:
                calls = [
                    {"index": j, "id": c.id, "type": "function", "function": c.function.model_dump()}
                    for j, c in enumerate(message.tool_calls)
                ]
            out.append(
                self.chunk(
                    [ChatChunkChoice(index=i, delta=ChunkDelta(content=message.content, tool_calls=calls))]
                )
            )
        out.append(
            self.chunk(
                [
                    ChatChunkChoice(index=i, delta=ChunkDelta(), finish_reason=r)
                    for i, r in enumerate(reasons)
                ],
                powersampling=info_finished(event),
            )
        )
        return out


__all__ = ["OpenAIServingChat", "chat_messages"]
