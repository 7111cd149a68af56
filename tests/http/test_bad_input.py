"""Bad input over HTTP: every case is a 4xx naming the parameter, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.http.support import ServerThread

MESSAGES = [{"role": "user", "content": "ab"}]
# (endpoint, body (dict: sent as JSON; bytes: sent as they are), expected status, expected param)
CASES: list[tuple[str, Any, int, str]] = [
    ("completions", b"{not json", 400, "body"),
    ("completions", b"", 400, "body"),
    ("completions", b"[1, 2]", 400, "body"),
    ("completions", b'{"prompt": "\xff\xfe"}', 400, "body"),  # invalid UTF-8
    ("completions", b"x" * (5 << 20), 413, "body"),  # over max_message_bytes (4 MiB)
    ("completions", {}, 400, "prompt"),
    ("completions", {"prompt": ""}, 400, "prompt"),
    ("completions", {"prompt": []}, 400, "prompt"),
    ("completions", {"prompt": 42}, 400, "prompt"),
    ("completions", {"prompt": "ab", "max_tokens": "8"}, 400, "max_tokens"),
    ("completions", {"prompt": "ab", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "ab", "max_tokens": 10**9}, 400, "max_tokens"),
    ("completions", {"prompt": "ab", "n": 0}, 400, "n"),
    ("completions", {"prompt": "ab", "n": 1000}, 400, "n"),
    ("completions", {"prompt": "ab", "n": True}, 400, "n"),
    ("completions", {"prompt": "ab", "seed": -1}, 400, "seed"),
    ("completions", {"prompt": "ab", "seed": 2**64}, 400, "seed"),
    ("completions", {"prompt": "ab", "alpha": 0.5}, 400, "alpha"),
    ("completions", {"prompt": "ab", "alpha": "high"}, 400, "alpha"),
    ("completions", {"prompt": "ab", "proposal_temperature": 0}, 400, "proposal_temperature"),
    ("completions", {"prompt": "ab", "block_size": 0}, 400, "block_size"),
    ("completions", {"prompt": "ab", "mcmc_steps": -1}, 400, "mcmc_steps"),
    ("completions", {"prompt": "ab", "token_budget": 1, "max_tokens": 8}, 400, "token_budget"),
    ("completions", {"prompt": "ab", "method": "beam"}, 400, "method"),
    ("completions", {"prompt": "ab", "stop": [""]}, 400, "stop"),
    ("completions", {"prompt": "ab", "stop": ["a"] * 17}, 400, "stop"),
    ("completions", {"prompt": "ab", "stop": 5}, 400, "stop"),
    ("completions", {"prompt": "ab", "logprobs": 2}, 400, "logprobs"),
    ("completions", {"prompt": "ab", "echo": True}, 400, "echo"),
    ("completions", {"prompt": "ab", "suffix": "z"}, 400, "suffix"),
    ("completions", {"prompt": "ab", "best_of": 2}, 400, "best_of"),
    ("completions", {"prompt": "ab", "frobnicate": 1}, 400, "frobnicate"),
    ("completions", {"prompt": "ab", "tenant": "a\x00b"}, 400, "tenant"),
    ("completions", {"prompt": "ab", "cache_policy": "sometimes"}, 400, "cache_policy"),
    ("completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("completions", {"prompt": "xyz"}, 400, "prompt"),  # characters outside the toy vocabulary
    ("completions", {"prompt": "ab", "model": "gpt-4o"}, 404, "model"),
    ("completions", {"prompt": "ab", "stream": "yes"}, 400, "stream"),
    (
        "completions",
        {"prompt": "ab", "stream_options": {"include_usage": 1}},
        400,
        "stream_options.include_usage",
    ),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "ab"}]}, 400, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("chat/completions", {"messages": "ab"}, 400, "messages"),
    ("chat/completions", {"messages": MESSAGES, "top_p": 0.9}, 400, "top_p"),
    ("chat/completions", {"messages": MESSAGES, "temperature": 0.7}, 400, "temperature"),
    (
        "chat/completions",
        {"messages": MESSAGES, "response_format": {"type": "json_object"}},
        400,
        "response_format",
    ),
    ("chat/completions", {"messages": MESSAGES, "logprobs": True}, 400, "logprobs"),
    ("chat/completions", {"messages": MESSAGES, "presence_penalty": 1}, 400, "presence_penalty"),
    (
        "chat/completions",
        {"messages": MESSAGES, "max_tokens": 8, "max_completion_tokens": 9},
        400,
        "max_completion_tokens",
    ),
    ("chat/completions", {"messages": MESSAGES, "max_completion_tokens": -3}, 400, "max_completion_tokens"),
    ("chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools[0].function"),
    ("chat/completions", {"messages": MESSAGES, "tool_choice": "required"}, 400, "tool_choice"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "param"), CASES)
def test_bad_input_is_a_4xx_naming_the_parameter(
    shared_server: ServerThread, endpoint: str, body: Any, status: int, param: str
) -> None:
    url = f"{shared_server.base_url}/{endpoint}"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    # ... and the server keeps serving
    ok = httpx.post(
        f"{shared_server.base_url}/completions", json={"prompt": "ab", "max_tokens": 4}, timeout=30
    )
    assert ok.status_code == 200, ok.text


def test_unknown_paths_and_methods_are_openai_errors(shared_server: ServerThread) -> None:
    assert httpx.get(f"{shared_server.base_url}/nothing").json()["error"]["param"] == "path"
    response = httpx.get(f"{shared_server.base_url}/completions")
    assert response.status_code == 405 and response.json()["error"]["param"] == "method"


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    keys = {(e, b[:50].hex() if isinstance(b, bytes) else json.dumps(b)) for e, b, _, _ in CASES}
    assert len(keys) == len(CASES)  # no case twice
