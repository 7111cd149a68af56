"""The sync and asyncio clients against a real server: typed events, errors, deadlines, retries, TLS."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from powersampling_client import (
    AsyncPowerSamplingClient,
    PowerSamplingClient,
    PowerSamplingError,
    Progress,
    ReasonResult,
    Started,
)
from powersampling_client.client import retry_service_config

from tests.client.conftest import ThreadedServer, server_in_thread
from tests.server.support import RecordingTelemetry, toy_engine
from tests.server.test_security import write_self_signed_certificate

QUICK = {"max_new_tokens": 12, "block_size": 4, "mcmc_steps": 2, "seed": 11}


def test_stream_yields_typed_events_in_order(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        events = list(client.stream("abc?", **QUICK))
    started, *progress, final = events
    assert isinstance(started, Started) and isinstance(final, ReasonResult)
    assert all(isinstance(p, Progress) for p in progress) and progress
    assert started.cache_status == "disabled" and started.seed == 11 and started.num_blocks == 3
    assert started.params.method == "power" and started.params.proposal_temperature is None
    assert started.params.token_budget is None and started.temperature == 0.25
    assert final.request_id == started.request_id and final.cache_status == "disabled"
    answer = final.answers[0]
    assert final.text == answer.text == progress[-1].text
    assert answer.finish_reason in ("eos", "length") and answer.seed == 11
    assert answer.stats.mcmc_steps == progress[-1].mcmc_steps and answer.stats.token_budget is None
    assert isinstance(answer.token_ids, tuple)


def test_reason_is_reproducible_with_a_seed(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        first = client.reason("abc?", **QUICK)
        second = client.reason("abc?", **QUICK)
        several = client.reason("abc?", n=3, token_budget=100, **QUICK)
    assert first.answers[0].token_ids == second.answers[0].token_ids
    assert len(several.answers) == 3 and several.answers[0].stats.token_budget == 100


def test_describe(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        info = client.describe()
    assert (info.model, info.engine, info.fingerprint) == ("toy-test", "toy", "toy-test-v1")
    assert info.defaults.method == "power" and info.defaults.seed is None
    assert info.limits.max_samples_per_request == 16 and info.max_context_tokens == 4096


def test_errors_name_the_field(server: ThreadedServer) -> None:
    with PowerSamplingClient(server.target) as client:
        with pytest.raises(PowerSamplingError) as info:
            client.reason("abc?", alpha=float("nan"))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.field == "alpha"
        assert not info.value.retryable
        with pytest.raises(PowerSamplingError) as info:
            client.reason("abc?", method="fast")  # type: ignore[arg-type]
        assert info.value.field == "method"  # refused before sending
        with pytest.raises(PowerSamplingError) as info:
            client.reason("abc?", max_new_tokens=-1)
        assert info.value.field == "max_new_tokens"
        with pytest.raises(PowerSamplingError) as info:
            client.reason("abc?", temperature=2.0)  # type: ignore[call-arg]
        assert info.value.field == "temperature"
        with pytest.raises(PowerSamplingError) as info:
            client.reason([{"role": "user", "content": "abc"}])
        assert info.value.field == "messages"  # the toy model has no chat template
        assert client.reason([1, 2, 3], method="greedy", max_new_tokens=4).answers[0].token_ids


def test_leaving_a_stream_early_cancels_the_call() -> None:
    engine = toy_engine(delay_s=0.002)
    with server_in_thread(lambda: engine) as server, PowerSamplingClient(server.target) as client:
        stream = client.stream("abc?", max_new_tokens=400, block_size=10, mcmc_steps=10)
        for event in stream:
            if isinstance(event, Progress):
                break
        stream.close()  # type: ignore[attr-defined]
        admission = server.running.servicer.admission
        deadline = time.monotonic() + 5
        while admission.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert admission.running == 0
        table = engine.table  # type: ignore[attr-defined]
        settled, deadline = -1, time.monotonic() + 5  # the proposal that was running may finish
        while settled != table.calls and time.monotonic() < deadline:
            settled = table.calls
            time.sleep(0.25)
        time.sleep(0.3)
        assert table.calls == settled


def test_the_deadline_is_the_clients_default_or_the_calls() -> None:
    with server_in_thread(lambda: toy_engine(delay_s=0.002)) as server:
        with (
            PowerSamplingClient(server.target, timeout_s=0.3) as client,
            pytest.raises(PowerSamplingError) as info,
        ):
            client.reason("abc?", max_new_tokens=400, block_size=10)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with PowerSamplingClient(server.target) as client, pytest.raises(PowerSamplingError) as info:
            client.reason("abc?", max_new_tokens=400, block_size=10, timeout_s=0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


class FlakyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses the first `failures` Reason calls with UNAVAILABLE, as a restarting server would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = itertools.count()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.endswith("/Reason") or next(self.calls) >= self.failures:  # type: ignore[attr-defined]
            return handler

        async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

        return grpc.unary_stream_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_unavailable_is_retried_with_backoff() -> None:
    flaky = FlakyInterceptor(failures=2)
    with server_in_thread(telemetry=RecordingTelemetry(interceptors=[flaky])) as server:
        with PowerSamplingClient(server.target, initial_backoff_s=0.01, max_backoff_s=0.05) as client:
            assert client.reason("abc?", **QUICK).answers
        assert next(flaky.calls) == 3  # two refused attempts, then the one that went through
        flaky.failures, flaky.calls = 1, itertools.count()
        with (
            PowerSamplingClient(server.target, max_attempts=1) as client,
            pytest.raises(PowerSamplingError) as info,
        ):
            client.reason("abc?", **QUICK)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.retryable


def test_retry_service_config() -> None:
    config = json.loads(retry_service_config(9, 0.5, 4.0))
    policy = config["methodConfig"][0]["retryPolicy"]
    assert config["methodConfig"][0]["name"] == [{"service": "powersampling.v1.ReasoningService"}]
    assert policy["maxAttempts"] == 5 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"] == "0.5s" and policy["maxBackoff"] == "4s"
    assert "retryPolicy" not in json.loads(retry_service_config(1, 0.5, 4.0))["methodConfig"][0]


def test_token_and_tls(tmp_path: Path) -> None:
    cert_file, key_file = write_self_signed_certificate(tmp_path)
    settings = {"auth_token": "tok", "tls_cert_file": cert_file, "tls_key_file": key_file}
    with server_in_thread(**settings) as server:
        with PowerSamplingClient(server.target, token="tok", root_certificates=cert_file) as client:
            assert client.reason("abc?", **QUICK).answers
        with PowerSamplingClient(server.target, root_certificates=cert_file.read_bytes()) as client:
            with pytest.raises(PowerSamplingError) as info:
                client.describe()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PowerSamplingClient(server.target, token="tok", max_attempts=1, timeout_s=3) as client:
            with pytest.raises(PowerSamplingError) as info:  # plaintext to a TLS port
                client.describe()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_async_client(server: ThreadedServer) -> None:
    async with AsyncPowerSamplingClient(server.target) as client:
        events = [event async for event in client.stream("abc?", **QUICK)]
        assert isinstance(events[0], Started) and isinstance(events[-1], ReasonResult)
        result = await client.reason("abc?", **QUICK)
        assert result.answers[0].token_ids == events[-1].answers[0].token_ids
        assert (await client.describe()).model == "toy-test"
        with pytest.raises(PowerSamplingError) as info:
            await client.reason("abc?", token_budget=3, max_new_tokens=10)
        assert info.value.field == "token_budget"


def test_describe_carries_the_work_caps(server: ThreadedServer) -> None:
    from powersampling.config import ServerConfig

    defaults = ServerConfig()
    with PowerSamplingClient(server.target) as client:
        limits = client.describe().limits
    assert (limits.max_new_tokens, limits.max_token_budget, limits.max_planned_tokens) == (
        defaults.max_new_tokens_limit,
        defaults.max_token_budget,
        defaults.max_planned_tokens,
    )
    assert limits.stream_idle_timeout_s == defaults.stream_idle_timeout_s and limits.stream_max_age_s == 0
    with PowerSamplingClient(server.target) as client:
        info = client.describe()
    assert info.engine_settings == {} and info.cache_settings == {}  # the toy engine, no cache
