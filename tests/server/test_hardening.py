"""What a hostile or careless client must not achieve: unbounded work, another tenant's answers,
tracebacks in the log; and what the operator sees: caps in Describe, one access line per call."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.cache.redis_keys import tenant_hash
from powersampling.config import load_config
from powersampling.errors import InvalidArgument
from powersampling.params import Method, SamplingParams
from powersampling.server.limits import WorkLimits, check_work, planned_tokens

from tests.server.support import MemoryCache, StartServer, collect, rpc_error, small_request

DESCRIBE_METHOD = "/powersampling.v1.ReasoningService/Describe"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- caps on a request's work -----------------------------------------------------------------------


def test_planned_tokens_is_the_worst_case_of_every_chain() -> None:
    # 3 blocks of 4 (targets 4, 8, 12), 3 steps each: 12 + 3 * (4 + 8 + 12) = 84 tokens per chain.
    params = SamplingParams(max_new_tokens=12, block_size=4, mcmc_steps=3, n=2)
    assert planned_tokens(params) == 2 * 84
    assert (
        planned_tokens(SamplingParams(max_new_tokens=12, block_size=4, mcmc_steps=3, token_budget=50)) == 50
    )
    assert planned_tokens(SamplingParams(method=Method.GREEDY, max_new_tokens=12, mcmc_steps=3)) == 12
    # The paper's defaults: 3072 + 10 * 192 * (1 + ... + 16) = 264,192 tokens.
    assert planned_tokens(SamplingParams()) == 264_192
    limits = WorkLimits(max_new_tokens=100, max_token_budget=1000, max_samples=4, max_planned_tokens=500)
    check_work(params, limits)
    with pytest.raises(InvalidArgument, match=r"^token_budget: .*max_planned_tokens of 500"):
        check_work(SamplingParams(max_new_tokens=60, block_size=1, mcmc_steps=10), limits)


@pytest.mark.parametrize(
    ("fields", "field", "cap"),
    [
        ({"max_new_tokens": 2000, "block_size": 100}, "max_new_tokens", "max_new_tokens_limit"),
        ({"token_budget": 1_000_000}, "token_budget", "max_token_budget"),
        ({"n": 5}, "n", "at most 4"),
        (
            {"max_new_tokens": 1000, "block_size": 1, "mcmc_steps": 10_000},
            "token_budget",
            "max_planned_tokens",
        ),
    ],
)
async def test_a_request_over_a_cap_is_refused_naming_the_field_and_the_cap(
    start_server: StartServer, fields: dict[str, int], field: str, cap: str
) -> None:
    server = await start_server(
        max_new_tokens_limit=1024,
        max_token_budget=100_000,
        max_samples_per_request=4,
        max_planned_tokens=50_000,
        default_max_new_tokens=256,  # the defaults must fit the caps too
        default_block_size=64,
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        error = await rpc_error(stub, small_request(**fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{field}: ") and cap in (error.details() or "")
        assert server.servicer.admission.running == 0  # refused before it took a slot
        limits = (await stub.Describe(pb.DescribeRequest())).limits
        assert (limits.max_new_tokens, limits.max_token_budget, limits.max_planned_tokens) == (
            1024,
            100_000,
            50_000,
        )
        assert limits.stream_idle_timeout_s == 60.0 and limits.stream_max_age_s == 0.0


async def test_defaults_over_the_caps_refuse_to_start(start_server: StartServer) -> None:
    with pytest.raises(InvalidArgument, match=r"^default_max_new_tokens: "):
        await start_server(max_new_tokens_limit=1000)  # the default max_new_tokens is 3072


# --- authentication and tenants ---------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_auth_token_is_refused(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match=r"^auth_token: must not be empty"):
        load_config(auth_token=token)
    monkeypatch.setenv("POWERSAMPLING_AUTH_TOKEN", token)
    with pytest.raises(InvalidArgument, match=r"^auth_token: must not be empty"):
        load_config()


def test_an_empty_tenant_token_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"^auth_tokens: a token must not be empty"):
        load_config(auth_tokens={"": "t"})


async def test_the_shared_token_cannot_read_a_tenants_answer(start_server: StartServer) -> None:
    cache = MemoryCache()
    server = await start_server(cache=cache, auth_token="shared", auth_tokens={"a-token": "tenantA"})
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = await collect(stub, small_request(), metadata=bearer("a-token"))
        assert events[0].started.cache_status == pb.CACHE_STATUS_MISS
        assert [key.tenant for key in cache.completed] == ["tenantA"]

        error = await rpc_error(stub, small_request(tenant="tenantA"), metadata=bearer("shared"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (error.details() or "").startswith("tenant: ")
        # Without a tenant the shared token works in the default namespace, never tenant A's.
        events = await collect(stub, small_request(), metadata=bearer("shared"))
        assert events[0].started.cache_status == pb.CACHE_STATUS_MISS
        assert sorted(key.tenant for key in cache.completed) == ["", "tenantA"]


async def test_tenant_tokens_from_a_file(start_server: StartServer, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"file-token": "acme"}))
    cache = MemoryCache()
    server = await start_server(cache=cache, auth_tokens_file=tokens)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        assert (await rpc_error(stub, small_request())).code() == grpc.StatusCode.UNAUTHENTICATED
        await collect(stub, small_request(), metadata=bearer("file-token"))
        assert {key.tenant for key in cache.completed} == {"acme"}


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1]", "must hold a JSON object"), ("{", "is not a JSON object"), ('{"": "a"}', "must not be empty")],
)
def test_a_bad_tokens_file_names_the_setting(tmp_path: Path, content: str, message: str) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(content)
    with pytest.raises(InvalidArgument, match=rf"^auth_tokens_file: .*{message}"):
        load_config(auth_tokens_file=tokens)
    with pytest.raises(InvalidArgument, match=r"^auth_tokens_file: cannot read"):
        load_config(auth_tokens_file=tmp_path / "missing.json")


async def test_refused_credentials_are_logged_without_the_token(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(auth_token="right-token")
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        with caplog.at_level(logging.INFO, logger="powersampling"):
            await rpc_error(stub, small_request(), metadata=bearer("wrong-token"))
    lines = [r.getMessage() for r in caplog.records if "refused credentials" in r.getMessage()]
    assert len(lines) == 1 and "Reason" in lines[0]
    assert "wrong-token" not in caplog.text and "right-token" not in caplog.text


# --- malformed input and oversized answers: a status, never a traceback -----------------------------


async def test_garbage_to_describe_is_invalid_argument(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        raw = channel.unary_unary(
            DESCRIBE_METHOD,
            request_serializer=lambda data: data,
            response_deserializer=pb.ServiceDescription.FromString,
        )
        with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\x0a\xff\xff\xff\xff\xff\xff")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("request: ")
        assert not [r for r in caplog.records if r.exc_info]
        assert (await raw(b"")).model == "toy-test"


async def test_an_answer_over_the_message_limit_is_resource_exhausted_without_a_traceback(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(max_message_bytes=4096)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        with caplog.at_level(logging.DEBUG):
            # 16 chains of 600 tokens: their answers (text and ids) far exceed 4 kB in one message.
            error = await rpc_error(
                stub, small_request(n=16, max_new_tokens=600, block_size=600, mcmc_steps=0)
            )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_bytes" in (error.details() or "")
        assert not [r for r in caplog.records if r.exc_info], caplog.text
        assert (await collect(stub, small_request()))[-1].HasField("final")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"text": "abc H"}, "text"),
        ({"token_ids": pb.TokenIds(ids=[1, 99])}, "token_ids"),
        ({"messages": pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="abc")])}, "messages"),
    ],
)
async def test_errors_name_the_prompt_field_the_client_sent(
    start_server: StartServer, fields: dict[str, object], field: str
) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        error = await rpc_error(pb_grpc.ReasoningServiceStub(channel), small_request(**fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{field}: "), error.details()


# --- the access log ---------------------------------------------------------------------------------


async def test_every_call_logs_one_access_line_without_the_prompt(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(cache=MemoryCache())
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        with caplog.at_level(logging.INFO, logger="powersampling.access"):
            final = (await collect(stub, small_request(text="abcab?", tenant="team-x")))[-1].final
            await collect(stub, small_request(text="abcab?", tenant="team-x"))  # a cache hit
            await rpc_error(stub, small_request(text="abcab?", alpha=0.5))
    lines = [r.getMessage() for r in caplog.records if r.name == "powersampling.access"]
    assert len(lines) == 3, lines
    spent = final.answers[0].stats.tokens_spent
    assert f"request={final.request_id} " in lines[0]
    assert f"tenant={tenant_hash('team-x')} " in lines[0] and "team-x" not in caplog.text
    assert "method=power status=OK" in lines[0] and f"tokens_spent={spent} cache=MISS" in lines[0]
    assert "status=OK" in lines[1] and "tokens_spent=0 cache=HIT" in lines[1]
    assert "status=INVALID_ARGUMENT" in lines[2]
    assert "abcab" not in caplog.text  # never the prompt
