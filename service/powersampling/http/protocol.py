"""The OpenAI-compatible request and response bodies, as pydantic models.

Requests are parsed strictly (a string where a number belongs is refused, not converted) and refuse
unknown fields, so a parameter we do not implement is named in a 400 instead of silently ignored.
Power-sampling knobs ride along as extra body fields with the names the gRPC API uses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from powersampling.params import SMC_FIELDS

# OpenAI parameters we recognise but do not implement: a request that sets one gets a 400 naming it.
UNSUPPORTED_PARAMS = (
    "logprobs",
    "top_logprobs",
    "top_p",
    "temperature",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "functions",
    "function_call",
    "best_of",
    "echo",
    "suffix",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "web_search_options",
)
# The extra body fields, each validated as the gRPC field of the same name is.
POWER_FIELDS = (
    "alpha",
    "proposal_temperature",
    "block_size",
    "mcmc_steps",
    "token_budget",
    *SMC_FIELDS,
)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessageParam(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class SamplingFields(_Strict):
    """What both endpoints take: OpenAI's knobs we implement, the power-sampling fields, our options."""

    model: str | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)  # accepted for compatibility; not used
    # Power sampling (extra body fields; names and rules as in the gRPC API).
    method: str | None = None
    alpha: float | None = None
    proposal_temperature: float | None = None
    block_size: int | None = None
    mcmc_steps: int | None = None
    token_budget: int | None = None
    particles: int | None = None  # Power-SMC (method "smc")
    sweeps: int | None = None
    resample_threshold: float | None = None
    chunk_size: int | None = None
    ramp_tokens: int | None = None
    tenant: str | None = None
    cache_policy: Literal["use", "bypass", "refresh"] | None = None
    # Recognised and refused when set (see UNSUPPORTED_PARAMS).
    logprobs: Any = None
    top_logprobs: Any = None
    top_p: Any = None
    temperature: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    response_format: Any = None
    functions: Any = None
    function_call: Any = None
    best_of: Any = None
    echo: Any = None
    suffix: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None
    web_search_options: Any = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageParam]
    max_completion_tokens: int | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[int]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: None = None


class AnswerStats(BaseModel):
    """Per choice: what power sampling did (the gRPC AnswerStats, by name)."""

    index: int
    seed: int
    tokens_spent: int
    mcmc_steps: int
    accepted_steps: int
    acceptance_rate: float
    log_prob: float
    finish_reason: str  # eos, stop or length


class PowerSamplingInfo(BaseModel):
    """The `powersampling` field of a response or chunk: the request's run, beyond OpenAI's shape."""

    request_id: str
    cache_status: str | None = None
    params: dict[str, Any] | None = None
    answers: list[AnswerStats] | None = None
    progress: dict[str, Any] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    powersampling: PowerSamplingInfo


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage
    powersampling: PowerSamplingInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    powersampling: PowerSamplingInfo | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None
    powersampling: PowerSamplingInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "powersampling"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorInfo


__all__ = [
    "POWER_FIELDS",
    "UNSUPPORTED_PARAMS",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionChunk",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorResponse",
    "ModelList",
]
