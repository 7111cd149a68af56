"""The `powersampling` command: serve, healthcheck, describe; one-line errors with exit status 2."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from powersampling import cli
from powersampling.config import ServerConfig
from powersampling.server.app import serve
from powersampling.telemetry.base import NoTelemetry

from tests.server.support import (  # noqa: F401
    SlowStartEngine,
    environment_without_server_settings,
    no_server_environment,
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--port", "abc"], "port: Input should be a valid integer"),
        (["serve", "--max-queue", "-1"], "max_queue: Input should be greater than or equal to 0"),
        (["serve", "--tls-cert-file", "cert.pem"], "tls_key_file: set both tls_cert_file and tls_key_file"),
        (["serve", "--auth-tokens", "[1]"], "auth_tokens: must be a JSON object"),
        (["serve", "--default-token-budget", "5"], "default_token_budget: 5 is below max_new_tokens"),
        (["serve", "--log-level", "LOUD"], "log_level: invalid choice"),
        (
            ["serve", "--default-particles", "0"],
            "default_particles: Input should be greater than or equal to 1",
        ),
        (["serve", "--default-sweeps", "65"], "default_sweeps: Input should be less than or equal to 64"),
        (
            ["serve", "--default-resample-threshold", "1.5"],
            "default_resample_threshold: Input should be less",
        ),
        (["serve", "--default-chunk-size", "0"], "default_chunk_size: Input should be greater than or equal"),
        (["serve", "--no-such-flag"], "--no-such-flag: unrecognized argument"),
        (["bogus"], "command: invalid choice"),
        ([], "command: required"),
        (["healthcheck", "--timeout-s", "soon"], "timeout_s: invalid float value"),
        (["healthcheck", "--timeout-s", "0"], "timeout_s: must be positive"),
        (["healthcheck", "--address", "no-port"], "address: expected HOST:PORT"),
        (["describe", "--tls-root-cert", "/no/such/file.pem"], "tls_root_cert: cannot read"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"powersampling: error: {expected}"), lines[0]
    assert "Traceback" not in captured.err


def test_every_server_setting_has_a_flag() -> None:
    serve_parser = cli.build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {option for action in serve_parser._actions for option in action.option_strings}
    for name in ServerConfig.model_fields:
        assert "--" + name.replace("_", "-") in flags


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerConfig] = []

    async def fake_serve(config: ServerConfig) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(cli, "_serve_until_signalled", fake_serve)
    monkeypatch.setenv("POWERSAMPLING_PORT", "6000")
    monkeypatch.setenv("POWERSAMPLING_MAX_QUEUE", "3")
    assert cli.main(["serve", "--port", "7000", "--no-reflection", "--default-method", "greedy"]) == 0
    (config,) = seen
    assert (config.port, config.max_queue, config.reflection) == (7000, 3, False)
    assert config.default_method.value == "greedy"


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`powersampling serve` on the demo toy engine in its own process; yields it and its address."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "powersampling.cli",
            "serve",
            "--engine",
            "toy",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=environment_without_server_settings(),
    )
    assert process.stderr is not None
    address = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        address = match[1] if match else address
        if "serving toy-demo" in line:
            break
    try:
        assert address, "the server did not start"
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_healthcheck_describe_and_stop_on_sigterm(
    serve_process: tuple[subprocess.Popen[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    process, address = serve_process
    assert cli.main(["healthcheck", "--address", address, "--timeout-s", "5"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert cli.main(["describe", "--address", address]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["model"] == "toy-demo" and description["engine"] == "toy"
    assert description["limits"]["max_concurrent_requests"] == 4

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert cli.main(["healthcheck", "--address", address, "--timeout-s", "1"]) == 1


def test_healthcheck_fails_when_no_server_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["healthcheck", "--address", "127.0.0.1:1", "--timeout-s", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


async def test_healthcheck_fails_while_the_model_loads() -> None:
    engine = SlowStartEngine()
    running = await serve(ServerConfig(host="127.0.0.1", port=0), engine=engine, telemetry=NoTelemetry())
    try:
        # The command is synchronous: run it off the loop that serves it.
        args = ["healthcheck", "--address", running.target]
        assert await asyncio.to_thread(cli.main, args) == 1
        engine.release()
        await running.wait_ready(5)
        assert await asyncio.to_thread(cli.main, args) == 0
    finally:
        await running.stop(0)
        await engine.close()


async def test_describe_sends_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from powersampling.engines.toy import demo_engine

    engine = demo_engine()
    config = ServerConfig(host="127.0.0.1", port=0, auth_token="tok")
    running = await serve(config, engine=engine, telemetry=NoTelemetry())
    await running.wait_ready(5)
    try:
        args = ["describe", "--address", running.target]
        assert await asyncio.to_thread(cli.main, args) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        monkeypatch.setenv(cli.TOKEN_ENV, "tok")
        assert await asyncio.to_thread(cli.main, args) == 0
    finally:
        await running.stop(0)
        await engine.close()
