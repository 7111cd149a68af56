"""The HTTP API's bounds on a call's time: a streamed client that stops reading is cut after
stream_idle_timeout_s and its slot freed; a call older than stream_max_age_s ends with an error
(an error event in a stream, a 504 otherwise); a slow model that is still producing is never cut."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.http.support import ServerThread, sse_events
from tests.server.support import MemoryCache, toy_engine

# One-token blocks, no MCMC: a progress chunk per token, ~0.4 KB each, far more than the buffers
# between the server and a client that stops reading (see `_stalled_stream`).
FLOOD = {"prompt": "abc?", "max_tokens": 2000, "block_size": 1, "mcmc_steps": 0, "seed": 11}
QUICK = {"prompt": "ab", "max_tokens": 4, "block_size": 4, "mcmc_steps": 1, "seed": 1}
BOUND_S = 1.0
LIVENESS_S = 60.0  # generous, for a loaded machine: the tests check that things end, not how fast


def _running(server: ServerThread) -> int:
    return server.running.servicer.admission.running


def _wait_until(predicate: Callable[[], bool], timeout_s: float = LIVENESS_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _stalled_stream(server: ServerThread, body: dict[str, object]) -> tuple[socket.socket, bytes]:
    """A streamed completion whose client reads the response's head and first event, then stops.

    The client's receive buffer and the server's send buffer are made small (connections inherit
    the listening socket's), so the server's writes block after some 80 KB: TCP's two buffers and
    asyncio's 64 KiB write buffer, over which uvicorn's send waits.
    """
    assert server.running.http is not None
    server.running.http._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(LIVENESS_S)
    client.connect(("127.0.0.1", server.running.http_port))
    payload = json.dumps({**body, "stream": True}).encode()
    client.sendall(
        b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    received = b""
    while b"\n\n" not in received.partition(b"data: ")[2]:
        received += client.recv(1024)
    return client, received


def _read_to_end(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    return received


def _first_event(head: bytes) -> dict[str, object]:
    data = head.partition(b"data: ")[2].partition(b"\n\n")[0]
    return json.loads(data)  # type: ignore[no-any-return]


def test_a_client_that_stops_reading_is_cut_and_frees_its_slot(
    start_http: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    engine = toy_engine(delay_s=0.002)  # ~4 s of sampling: still running when the stream is cut
    server = start_http(
        engine, cache=MemoryCache(), max_concurrent_requests=1, max_queue=1, stream_idle_timeout_s=BOUND_S
    )
    with caplog.at_level(logging.INFO):
        stuck, head = _stalled_stream(server, FLOOD)
        assert head.startswith(b"HTTP/1.1 200")
        assert _running(server) == 1
        # Queued behind the stuck stream, which holds the only slot until it is cut: without the
        # bound this waits forever.
        quick = httpx.post(f"{server.base_url}/completions", json=QUICK, timeout=LIVENESS_S)
        assert quick.status_code == 200
        _wait_until(lambda: _running(server) == 0, timeout_s=10)
        calls = engine.table.calls  # type: ignore[attr-defined]
        time.sleep(0.3)
        assert engine.table.calls == calls  # type: ignore[attr-defined]  # its sampling stopped

        # Reading at last, the client gets what was sent, then the reason, and no [DONE].
        rest = _read_to_end(stuck).decode()
    assert '"code":"stream_idle_timeout"' in rest and "stream_idle_timeout_s" in rest
    assert "[DONE]" not in rest
    access = [r.getMessage() for r in caplog.records if r.name == "powersampling.access"]
    assert any("status=408" in line for line in access), access
    assert any(
        "stream_idle_timeout_s" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

    # Its checkpoints were kept: the same request sent again resumes.
    again, head = _stalled_stream(server, FLOOD)
    started = _first_event(head)["powersampling"]
    assert started["cache_status"] == "resumed"  # type: ignore[index]
    again.close()
    _wait_until(lambda: _running(server) == 0, timeout_s=10)


def test_a_stream_older_than_the_max_age_ends_with_an_error_event(
    start_http: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_http(toy_engine(delay_s=0.002), stream_max_age_s=BOUND_S)
    with caplog.at_level(logging.INFO, logger="powersampling.access"):
        response = httpx.post(
            f"{server.base_url}/completions", json={**FLOOD, "stream": True}, timeout=LIVENESS_S
        )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert error["code"] == "deadline_exceeded" and "stream_max_age_s" in error["message"]
    assert all("error" not in e for e in events[:-1]) and len(events) > 1  # it was streaming
    assert any("status=504" in r.getMessage() for r in caplog.records if r.name == "powersampling.access")
    _wait_until(lambda: _running(server) == 0, timeout_s=10)

    # The OpenAI SDK raises on the error event.
    sdk = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.APIError, match="stream_max_age_s"):
        for _ in sdk.completions.create(
            model="toy-test",
            prompt=FLOOD["prompt"],  # type: ignore[arg-type]
            max_tokens=2000,
            stream=True,
            extra_body={"block_size": 1, "mcmc_steps": 0},
        ):
            pass
    # The server serves on.
    assert httpx.post(f"{server.base_url}/completions", json=QUICK, timeout=LIVENESS_S).status_code == 200


def test_a_plain_request_older_than_the_max_age_gets_a_504(start_http: Callable[..., ServerThread]) -> None:
    server = start_http(toy_engine(delay_s=0.002), stream_max_age_s=BOUND_S)
    response = httpx.post(f"{server.base_url}/completions", json=FLOOD, timeout=LIVENESS_S)
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded" and "stream_max_age_s" in error["message"]
    assert response.headers["x-request-id"] in error["message"]
    _wait_until(lambda: _running(server) == 0, timeout_s=10)
    assert httpx.post(f"{server.base_url}/completions", json=QUICK, timeout=LIVENESS_S).status_code == 200


def test_a_slow_model_that_is_still_producing_is_not_cut(start_http: Callable[..., ServerThread]) -> None:
    # Each 4-token block takes ~0.8 s, longer than the idle bound: the stream sends nothing for
    # that long, but nothing is waiting to be sent either, so it is not taken for a stalled client.
    idle_s = 0.3
    server = start_http(toy_engine(delay_s=0.2), stream_idle_timeout_s=idle_s)
    body = {"prompt": "ab", "max_tokens": 8, "block_size": 4, "mcmc_steps": 0, "seed": 5, "stream": True}
    gaps: list[float] = []
    events: list[object] = []
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=LIVENESS_S) as response:
        last = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("data: "):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                events.extend(sse_events(line + "\n"))
    assert events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    assert max(gaps) > idle_s  # the model was silent for longer than the bound, and was not cut
