"""POST /v1/completions on the serving core: a raw prompt (text or token ids) in, completions out."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from powersampling.engines.base import Prompt
from powersampling.errors import InvalidArgument
from powersampling.http.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from powersampling.http.serving_base import (
    FINISH_REASONS,
    Call,
    OpenAIServing,
    RendererBase,
    info_finished,
    info_progress,
    info_started,
    usage,
)
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.serving.request import Identity, RequestLimits, check_chars


class OpenAIServingCompletion(OpenAIServing):
    """Completions: the prompt is sent as it is (no chat template), as OpenAI's legacy endpoint does."""

    async def create(self, request: Request) -> Response:
        return await self.handle(request, self._create)

    async def _create(
        self, request: Request, call: Call, limits: RequestLimits, identity: Identity
    ) -> Response:
        body = await self.read_body(request, CompletionRequest)
        self.check_model(body.model, call.engine)
        params = self.sampling_params(body, ("max_tokens", body.max_tokens), self.core.defaults)
        prompt: Prompt
        if isinstance(body.prompt, str):
            if not body.prompt.strip():
                raise InvalidArgument("prompt", "must not be empty")
            check_chars("prompt", len(body.prompt), limits)
            prompt = body.prompt
        else:
            if not body.prompt:
                raise InvalidArgument("prompt", "must not be empty")
            if len(body.prompt) > limits.max_context_tokens:
                raise InvalidArgument(
                    "prompt",
                    f"{len(body.prompt)} tokens do not fit the context of {limits.max_context_tokens}",
                )
            prompt = body.prompt
        valid = self.valid_request(
            body=body,
            prompt=prompt,
            prompt_field="prompt",
            chat=False,
            params=params,
            limits=limits,
            identity=identity,
            max_tokens_field="max_tokens",
        )
        renderer = _CompletionRenderer(call, n=params.n)
        return await self.respond(request, call, valid, body, renderer)


class _CompletionRenderer(RendererBase):
    """The core's events as completion bodies and chunks."""

    def response(self, finished: CallFinished) -> CompletionResponse:
        return CompletionResponse(
            **self.envelope(),
            choices=[
                CompletionChoice(
                    index=i, text=r.text, finish_reason=FINISH_REASONS.get(r.finish_reason, "stop")
                )
                for i, r in enumerate(finished.results)
            ],
            usage=usage(finished),
            powersampling=info_finished(finished),
        )

    def _chunk(self, choices: list[CompletionChunkChoice], **extra: Any) -> CompletionChunk:
        return CompletionChunk(
            **self.envelope(),
            choices=choices,
            **extra,
        )

    def chunks(self, event: CallEvent) -> list[BaseModel]:
        if isinstance(event, CallStarted):
            return [self._chunk([], powersampling=info_started(event))]
        if isinstance(event, CallProgress):  # statistics only: the text may still be revised
            return [self._chunk([], powersampling=info_progress(self.call.request_id, event))]
        assert isinstance(event, CallFinished)
        out: list[BaseModel] = [
            self._chunk([CompletionChunkChoice(index=i, text=r.text)]) for i, r in enumerate(event.results)
        ]
        out.append(
            self._chunk(
                [
                    CompletionChunkChoice(
                        index=i, text="", finish_reason=FINISH_REASONS.get(r.finish_reason, "stop")
                    )
                    for i, r in enumerate(event.results)
                ],
                powersampling=info_finished(event),
            )
        )
        return out

    def usage_chunk(self, counts: Usage) -> CompletionChunk:
        return self._chunk([], usage=counts)


__all__ = ["OpenAIServingCompletion"]
