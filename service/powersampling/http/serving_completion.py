"""POST /v1/completions on the serving core: a raw prompt (text or token ids) in, completions out."""

from __future__ import annotations

from pydantic import BaseModel

from powersampling.engines.base import Prompt
from powersampling.errors import InvalidArgument
from powersampling.http.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
    CompletionResponse,
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
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.serving.request import Identity, RequestLimits, ValidRequest, check_chars


class OpenAIServingCompletion(OpenAIServing[CompletionRequest]):
    """Completions: the prompt is sent as it is (no chat template), as OpenAI's legacy endpoint does."""

    body_type = CompletionRequest

    def prepare(
        self, body: CompletionRequest, call: Call, limits: RequestLimits, identity: Identity
    ) -> tuple[ValidRequest, Renderer]:
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
        return valid, _CompletionRenderer(call, n=params.n)


class _CompletionRenderer(RendererBase):
    """The core's events as completion bodies and chunks."""

    chunk_type = CompletionChunk

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

    def chunks(self, event: CallEvent) -> list[BaseModel]:
        if isinstance(event, CallStarted):
            return [self.chunk([], powersampling=info_started(event))]
        if isinstance(event, CallProgress):  # statistics only: the text may still be revised
            return [self.chunk([], powersampling=info_progress(self.call.request_id, event))]
        assert isinstance(event, CallFinished)
        out: list[BaseModel] = [
            self.chunk([CompletionChunkChoice(index=i, text=r.text)]) for i, r in enumerate(event.results)
        ]
        out.append(
            self.chunk(
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


__all__ = ["OpenAIServingCompletion"]
