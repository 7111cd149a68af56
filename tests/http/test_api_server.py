"""The HTTP listener's lifecycle: client disconnects stop the engine work, both listeners drain
together, the access line names the transport, SMC's fields arrive, the cache is shared with gRPC."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

from tests.http.support import ServerThread, extension, sse_events
from tests.server.support import toy_engine

LONG = {"prompt": "ab", "max_tokens": 400, "block_size": 10, "mcmc_steps": 10, "seed": 1}


def settle(engine: object, quiet_s: float = 0.3, timeout_s: float = 10.0) -> int:
    """Wait until the engine's token counter stops moving; returns it (fails if it never stops)."""
    table = engine.table  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    before = table.calls
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if table.calls == before:
            return before
        before = table.calls
    raise AssertionError("the engine kept working")


def test_a_stream_cancelled_by_client_disconnect_stops_the_engine_work(
    start_http: Callable[..., ServerThread],
) -> None:
    engine = toy_engine(delay_s=0.002)
    server = start_http(engine)
    with httpx.stream(
        "POST", f"{server.base_url}/completions", json={**LONG, "stream": True}, timeout=30
    ) as response:
        lines = response.iter_lines()
        seen = [line for line, _ in zip(lines, range(3), strict=False)]  # the stream is under way
        assert seen[0].startswith("data: ")
        assert engine.table.calls > 0  # type: ignore[attr-defined]
    # The client closed the connection: the work stops long before the minutes it would take.
    stopped_at = settle(engine)
    assert stopped_at < 400 * 11 * 10  # far below the request's planned work
    deadline = time.monotonic() + 10
    while server.running.servicer.admission.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.running.servicer.admission.running == 0  # the slot is free again
    ok = httpx.post(f"{server.base_url}/completions", json={"prompt": "ab", "max_tokens": 4}, timeout=30)
    assert ok.status_code == 200


def test_a_plain_request_whose_client_leaves_stops_the_engine_work(
    start_http: Callable[..., ServerThread],
) -> None:
    engine = toy_engine(delay_s=0.002)
    server = start_http(engine)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/completions", json=LONG, timeout=httpx.Timeout(30, read=0.5))
    assert engine.table.calls > 0  # type: ignore[attr-defined]
    assert settle(engine) < 400 * 11 * 10


def test_sigterm_drain_covers_both_listeners(start_http: Callable[..., ServerThread]) -> None:
    server = start_http(toy_engine(delay_s=0.001))
    body = {"prompt": "ab", "max_tokens": 40, "block_size": 10, "mcmc_steps": 2, "seed": 3, "stream": True}
    results: dict[str, object] = {}

    def http_call() -> None:
        results["http"] = httpx.post(f"{server.base_url}/completions", json=body, timeout=60).text

    def grpc_call() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ReasoningServiceStub(channel)
            request = pb.ReasonRequest(text="ab", max_new_tokens=40, block_size=10, mcmc_steps=2, seed=3)
            results["grpc"] = list(stub.Reason(request))[-1]

    threads = [threading.Thread(target=http_call), threading.Thread(target=grpc_call)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while server.running.servicer.admission.running < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.call(lambda: server.running.stop(30))  # what SIGTERM does: drain both, then close
    for t in threads:
        t.join(30)
    events = sse_events(str(results["http"]))
    assert events[-1] == "[DONE]"
    http_text = "".join(c["text"] for e in events[:-1] for c in e["choices"])
    final = results["grpc"].final  # type: ignore[attr-defined]
    assert http_text == final.answers[0].text  # both finished, and agree
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.running.http_url + "/health", timeout=2)  # type: ignore[operator]


def test_every_http_call_writes_one_access_line(
    http_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="powersampling.access"):
        httpx.post(f"{http_server.base_url}/completions", json={"prompt": "ab", "max_tokens": 4, "seed": 1})
        httpx.post(f"{http_server.base_url}/completions", json={"prompt": "ab", "alpha": 0})
        httpx.post(
            f"{http_server.base_url}/completions", json={"prompt": "ab", "max_tokens": 4, "stream": True}
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "powersampling.access"]
    assert len(lines) == 3
    assert all("transport=http" in line for line in lines)
    assert "status=200" in lines[0] and "status=400" in lines[1] and "status=200" in lines[2]
    assert all("ab" not in line.split("request=")[0] for line in lines)


def test_smc_fields_reach_the_sampler_and_mh_knobs_are_refused_with_smc(http_server: ServerThread) -> None:
    sdk = openai.OpenAI(base_url=http_server.base_url, api_key="x", max_retries=0)
    result = sdk.completions.create(
        model="toy-test",
        prompt="ab",
        max_tokens=8,
        seed=2,
        extra_body={"method": "smc", "particles": 4, "sweeps": 2, "chunk_size": 4, "resample_threshold": 0.5},
    )
    assert result.choices[0].text
    chunks = list(
        sdk.completions.create(
            model="toy-test",
            prompt="ab",
            max_tokens=8,
            seed=2,
            stream=True,
            extra_body={
                "method": "smc",
                "particles": 4,
                "sweeps": 2,
                "chunk_size": 4,
                "resample_threshold": 0.5,
            },
        )
    )
    progress = [extension(c)["progress"] for c in chunks if extension(c).get("progress")]
    assert {p["sweep_index"] for p in progress} == {0, 1}  # two sweeps, as asked
    assert any(p.get("sweep_finished") for p in progress)
    assert "".join(ch.text for c in chunks for ch in c.choices) == result.choices[0].text
    for name, value in (("block_size", 4), ("mcmc_steps", 2)):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.completions.create(
                model="toy-test", prompt="ab", max_tokens=8, extra_body={"method": "smc", name: value}
            )
        assert refused.value.body["param"] == name  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model="toy-test", prompt="ab", max_tokens=8, extra_body={"particles": 4})
    assert refused.value.body["param"] == "particles"  # type: ignore[index]


def test_a_cache_hit_over_http_after_grpc_and_the_other_way(
    start_http: Callable[..., ServerThread], tmp_path: Path
) -> None:
    from tests.cache.support import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    try:
        server = start_http(toy_engine(), redis_url=redis.url)
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ReasoningServiceStub(channel)

            def grpc_final(seed: int) -> pb.Final:
                request = pb.ReasonRequest(
                    text="ab", max_new_tokens=12, block_size=4, mcmc_steps=2, seed=seed, chat=False
                )
                return list(stub.Reason(request))[-1].final

            def http_result(seed: int) -> openai.types.Completion:
                return sdk.completions.create(
                    model="toy-test",
                    prompt="ab",
                    max_tokens=12,
                    seed=seed,
                    extra_body={"block_size": 4, "mcmc_steps": 2},
                )

            first = grpc_final(21)
            assert first.cache_status == pb.CACHE_STATUS_MISS
            hit = http_result(21)
            assert extension(hit)["cache_status"] == "hit"
            assert hit.choices[0].text == first.answers[0].text

            second = http_result(22)
            assert extension(second)["cache_status"] == "miss"
            again = grpc_final(22)
            assert again.cache_status == pb.CACHE_STATUS_HIT
            assert again.answers[0].text == second.choices[0].text
    finally:
        redis.stop()
