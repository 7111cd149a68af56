"""Bad requests get INVALID_ARGUMENT naming the field, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.errors import InvalidArgument
from powersampling.params import Method, SamplingParams
from powersampling.results import CachePolicy
from powersampling.server.validation import (
    MalformedRequest,
    RequestLimits,
    decode_reason_request,
    validate_reason_request,
)
from powersampling.serving.errors import PermissionDenied

from tests.server.support import REASON_METHOD, StartServer, collect, small_request

MARK = "@@BAD@@"  # replaced, byte for byte, by invalid UTF-8 of the same length


def with_invalid_utf8(request: pb.ReasonRequest) -> bytes:
    data = request.SerializeToString()
    assert data.count(MARK.encode()) == 1
    return data.replace(MARK.encode(), b"\xff\xfe\xfd" + MARK.encode()[3:])


def messages(*pairs: tuple[str, str]) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[pb.ChatMessage(role=r, content=c) for r, c in pairs])


# (request fields, field named at the start of the status message)
BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"text": None}, "prompt"),
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"messages": messages()}, "messages"),
    ({"messages": messages(("robot", "abc"))}, "messages[0].role"),
    ({"messages": messages(("user", "abc"))}, "messages"),  # the toy model has no chat template
    ({"token_ids": pb.TokenIds()}, "token_ids"),
    ({"token_ids": pb.TokenIds(ids=[1, 99])}, "token_ids"),
    ({"text": "abc H"}, "text"),  # a character the toy tokenizer does not know
    ({"text": "a" * 200_001}, "text"),  # characters beyond the server's limit
    ({"text": "ab" * 2100}, "text"),  # 4200 tokens beyond the toy model's 4096-token context
    ({"token_ids": pb.TokenIds(ids=[1] * 5000)}, "token_ids"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": -2.0}, "alpha"),
    ({"alpha": 0.5}, "alpha"),
    ({"alpha": float("inf")}, "alpha"),
    ({"proposal_temperature": 0.0}, "proposal_temperature"),
    ({"proposal_temperature": float("nan")}, "proposal_temperature"),
    ({"token_budget": 5}, "token_budget"),  # below max_new_tokens (12)
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 4093}, "max_new_tokens"),  # with the 4-token prompt, beyond the context
    ({"mcmc_steps": 10_001}, "mcmc_steps"),
    ({"method": 9}, "method"),
    ({"cache_policy": 7}, "cache_policy"),
    ({"block_size": 0}, "block_size"),
    ({"block_size": 5000}, "block_size"),  # beyond the model's whole context
    ({"block_size": 2_000_000}, "block_size"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),  # beyond max_samples_per_request
    ({"seed": 2**63}, "seed"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x" * 257]}, "stop"),
    ({"tenant": "t" * 129}, "tenant"),
    ({"tenant": "bad\ntenant"}, "tenant"),
]


def _request(fields: dict[str, Any]) -> pb.ReasonRequest:
    fields = dict(fields)
    if fields.get("text", "") is None:
        del fields["text"]
        request = small_request(token_ids=pb.TokenIds(ids=[1]))
        request.ClearField("token_ids")
        return request
    return small_request(**fields)


async def test_every_bad_field_is_named_and_the_server_keeps_serving(
    stub: pb_grpc.ReasoningServiceStub,
) -> None:
    failures = []
    for fields, field in BAD_REQUESTS:
        try:
            await collect(stub, _request(fields))
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith(f"{field}: "):
                failures.append(f"{fields!r:.60}: {exc.code().name} {details!r}")
        else:
            failures.append(f"{fields!r:.60}: accepted")
    assert not failures, "\n".join(failures)
    assert (await collect(stub, small_request()))[-1].HasField("final")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (small_request(text=MARK), "text"),
        (small_request(stop=["ok", MARK]), "stop[1]"),
        (small_request(tenant=MARK), "tenant"),
        (small_request(messages=messages(("user", "ok"), ("user", MARK))), "messages.messages[1].content"),
        (small_request(messages=messages((MARK, "ok"))), "messages.messages[0].role"),
    ],
)
async def test_invalid_utf8_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, request_: pb.ReasonRequest, field: str
) -> None:
    raw = channel.unary_stream(
        REASON_METHOD, request_serializer=lambda data: data, response_deserializer=pb.ReasonEvent.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in raw(with_invalid_utf8(request_)):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"{field}: is not valid UTF-8"
    stub = pb_grpc.ReasoningServiceStub(channel)
    assert (await collect(stub, small_request()))[-1].HasField("final")


async def test_garbage_bytes_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    raw = channel.unary_stream(
        REASON_METHOD, request_serializer=lambda data: data, response_deserializer=pb.ReasonEvent.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in raw(b"\x0a\xff\xff\xff\xff\xff\xff"):  # a length that runs past the end
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("request: ")


async def test_a_message_beyond_the_size_limit_is_refused(start_server: StartServer) -> None:
    server = await start_server(max_message_bytes=64 * 1024)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, small_request(text="a" * 100_000))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await collect(stub, small_request()))[-1].HasField("final")


# --- validate_reason_request without a server ------------------------------------------------------

LIMITS = RequestLimits(max_samples_per_request=4, max_prompt_chars=100, max_context_tokens=8192)


def test_unset_fields_take_the_defaults_and_set_ones_win() -> None:
    defaults = SamplingParams(method=Method.GREEDY, alpha=2.0, max_new_tokens=20, block_size=5)
    valid = validate_reason_request(pb.ReasonRequest(text="hi"), defaults, LIMITS)
    assert valid.params == defaults and valid.prompt == "hi" and valid.chat is None
    assert valid.cache_policy is CachePolicy.USE and valid.tenant == ""
    request = pb.ReasonRequest(
        text="hi",
        method=pb.METHOD_POWER,
        alpha=3.0,
        seed=0,
        mcmc_steps=0,
        stop=["\n"],
        chat=False,
        cache_policy=pb.CACHE_POLICY_REFRESH,
        tenant="team-a",
    )
    valid = validate_reason_request(request, defaults, LIMITS)
    assert valid.params.method is Method.POWER and valid.params.alpha == 3.0
    assert valid.params.seed == 0 and valid.params.mcmc_steps == 0  # explicit zeros are kept
    assert valid.params.stop == ("\n",) and valid.chat is False
    assert valid.cache_policy is CachePolicy.REFRESH and valid.tenant == "team-a"


def test_messages_and_token_ids_become_engine_prompts() -> None:
    request = pb.ReasonRequest(messages=messages(("system", "be brief"), ("user", "hi")))
    assert validate_reason_request(request, SamplingParams(), LIMITS).prompt == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    request = pb.ReasonRequest(token_ids=pb.TokenIds(ids=[3, 1, 2]))
    assert validate_reason_request(request, SamplingParams(), LIMITS).prompt == [3, 1, 2]


def test_a_tenant_bound_to_the_token_wins() -> None:
    def tenant(request: pb.ReasonRequest) -> str:
        return validate_reason_request(request, SamplingParams(), LIMITS, bound_tenant="acme").tenant

    assert tenant(pb.ReasonRequest(text="hi")) == "acme"
    assert tenant(pb.ReasonRequest(text="hi", tenant="acme")) == "acme"
    with pytest.raises(PermissionDenied, match=r"^tenant: "):
        tenant(pb.ReasonRequest(text="hi", tenant="other"))


def test_decode_finds_invalid_utf8_in_nested_and_repeated_fields() -> None:
    good = small_request(stop=["a"])
    assert decode_reason_request(good.SerializeToString()) == good
    bad = with_invalid_utf8(
        small_request(messages=messages(("user", "x"), ("assistant", "y"), ("user", MARK)))
    )
    assert decode_reason_request(bad) == MalformedRequest(
        "messages.messages[2].content", "is not valid UTF-8"
    )
    truncated = good.SerializeToString()[:-1]
    decoded = decode_reason_request(truncated)
    assert isinstance(decoded, MalformedRequest) and decoded.field == "request"
    with pytest.raises(InvalidArgument, match=r"^request: "):
        validate_reason_request(decoded, SamplingParams(), LIMITS)
