"""Every check of a Reason request, before anything reaches the engine.

`decode_reason_request` is the request deserializer: bytes that protobuf refuses (a `string` field
holding invalid UTF-8, or a truncated message) become a `MalformedRequest` naming the field instead
of an exception, so the client gets INVALID_ARGUMENT rather than a bare transport error.
`validate_reason_request` turns a ReasonRequest into a prompt, validated SamplingParams and request
options, or raises InvalidArgument naming the proto field ("alpha: must be finite, got nan").

Checks that need the tokenizer (the prompt's length in tokens against the model's context, token
ids inside the vocabulary, chat message roles) run in `powersampling.api.encode_and_check` once the
request is admitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.engines.base import ChatMessage, Prompt
from powersampling.errors import InvalidArgument
from powersampling.params import SMC_FIELDS, Method, SamplingParams
from powersampling.results import CachePolicy
from powersampling.serving.request import (
    NOT_FOR_SMC,
    RequestLimits,
    ValidRequest,
    check_chars,
    check_limits,
    check_smc_fields,
    resolve_tenant,
    smc_options,
)

METHODS: dict[int, Method] = {
    pb.METHOD_POWER: Method.POWER,
    pb.METHOD_SAMPLE: Method.SAMPLE,
    pb.METHOD_LOW_TEMP: Method.LOW_TEMP,
    pb.METHOD_GREEDY: Method.GREEDY,
    pb.METHOD_SMC: Method.SMC,
}
CACHE_POLICIES: dict[int, CachePolicy] = {
    pb.CACHE_POLICY_UNSPECIFIED: CachePolicy.USE,
    pb.CACHE_POLICY_USE: CachePolicy.USE,
    pb.CACHE_POLICY_BYPASS: CachePolicy.BYPASS,
    pb.CACHE_POLICY_REFRESH: CachePolicy.REFRESH,
}
# Request fields that map one to one onto SamplingParams fields of the same name (proto3 optional).
_OPTIONAL_PARAMS = (
    "alpha",
    "proposal_temperature",
    "block_size",
    "max_new_tokens",
    "mcmc_steps",
    "token_budget",
    "seed",
    "n",
    *SMC_FIELDS,
)
# Power sampling's knobs that method smc does not use: setting one with it is a mistake worth naming.
_NOT_FOR_SMC = NOT_FOR_SMC


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Request bytes that do not parse; `field` names where, as far as the bytes tell."""

    field: str
    message: str


def decode_reason_request(data: bytes) -> pb.ReasonRequest | MalformedRequest:
    """The request deserializer: a ReasonRequest, or what is wrong with the bytes (never raises)."""
    try:
        return pb.ReasonRequest.FromString(data)
    except DecodeError:
        try:
            field = _invalid_utf8_field(pb.ReasonRequest.DESCRIPTOR, data)
        except (IndexError, ValueError):
            field = None
        if field is not None:
            return MalformedRequest(field, "is not valid UTF-8")
        return MalformedRequest("request", "is not a valid ReasonRequest message")


def decode_describe_request(data: bytes) -> pb.DescribeRequest | MalformedRequest:
    """The Describe deserializer: a DescribeRequest, or what is wrong with the bytes (never raises)."""
    try:
        return pb.DescribeRequest.FromString(data)
    except DecodeError:
        return MalformedRequest("request", "is not a valid DescribeRequest message")


def validate_reason_request(
    request: pb.ReasonRequest | MalformedRequest,
    defaults: SamplingParams,
    limits: RequestLimits,
    *,
    bound_tenant: str | None = None,
    smc_defaults: Mapping[str, Any] | None = None,
) -> ValidRequest:
    """Check `request` against the server's defaults and limits; raise InvalidArgument naming the field.

    `bound_tenant` is the tenant that the caller's credentials carry, if any: it overrides the
    request's (which may only be empty or equal to it). `smc_defaults` are what an smc request's
    unset SMC fields take (default: `defaults`' own when its method is smc, else the method's).
    """
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(request.field, request.message)
    prompt = _prompt(request, limits)
    method = _method(request.method, defaults)
    cache_policy = CACHE_POLICIES.get(request.cache_policy)
    if cache_policy is None:
        raise InvalidArgument("cache_policy", f"unknown value {request.cache_policy}")
    options = {name: getattr(request, name) for name in _OPTIONAL_PARAMS if request.HasField(name)}
    options = {**smc_options(method, defaults, smc_defaults), **options}
    params = dataclasses.replace(defaults, method=method, stop=tuple(request.stop), **options)
    check_smc_fields(method, [name for name in _NOT_FOR_SMC if request.HasField(name)])
    check_limits(params, limits)
    return ValidRequest(
        prompt=prompt,
        params=params,
        chat=request.chat if request.HasField("chat") else None,
        cache_policy=cache_policy,
        tenant=resolve_tenant(request.tenant, bound_tenant),
        prompt_field=request.WhichOneof("prompt") or "prompt",
    )


def _prompt(request: pb.ReasonRequest, limits: RequestLimits) -> Prompt:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidArgument("prompt", "set one of text, messages or token_ids")
    if kind == "text":
        if not request.text.strip():
            raise InvalidArgument("text", "must not be empty")
        check_chars("text", len(request.text), limits)
        return request.text
    if kind == "messages":
        items = request.messages.messages
        if not items:
            raise InvalidArgument("messages", "must hold at least one message")
        check_chars("messages", sum(len(m.content) + len(m.role) for m in items), limits)
        messages: list[ChatMessage] = [{"role": m.role, "content": m.content} for m in items]
        return messages
    ids = list(request.token_ids.ids)
    if not ids:
        raise InvalidArgument("token_ids", "must not be empty")
    if len(ids) > limits.max_context_tokens:
        raise InvalidArgument(
            "token_ids", f"{len(ids)} tokens do not fit the model's context of {limits.max_context_tokens}"
        )
    return ids


def _method(value: int, defaults: SamplingParams) -> Method:
    if value == pb.METHOD_UNSPECIFIED:
        return defaults.method
    method = METHODS.get(value)
    if method is None:
        known = ", ".join(pb.Method.Name(v) for v in METHODS)
        raise InvalidArgument("method", f"unknown value {value}; use one of {known}")
    return method


# --- Locating invalid UTF-8 in raw protobuf bytes --------------------------------------------------

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError on truncated input: the caller treats it as malformed
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _invalid_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """Path of the first `string` field holding invalid UTF-8 ("stop[1]", "messages.messages[0].role").

    Walks the wire format with the message's descriptor; None when no such field is found.
    """
    pos = 0
    seen: dict[int, int] = {}  # occurrences of each repeated field so far, for its index
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
            continue
        if wire_type in (_FIXED64, _FIXED32):
            pos += 8 if wire_type == _FIXED64 else 4
            continue
        if wire_type != _LENGTH_DELIMITED:
            return None  # groups are not used by this API
        length, pos = _varint(data, pos)
        chunk, pos = data[pos : pos + length], pos + length
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        name = prefix + field.name
        if field.is_repeated:
            index = seen.get(number, 0)
            seen[number] = index + 1
            name += f"[{index}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            found = _invalid_utf8_field(field.message_type, chunk, name + ".")
            if found is not None:
                return found
    return None


__all__ = [
    "CACHE_POLICIES",
    "METHODS",
    "MalformedRequest",
    "RequestLimits",
    "ValidRequest",
    "decode_describe_request",
    "decode_reason_request",
    "validate_reason_request",
]
