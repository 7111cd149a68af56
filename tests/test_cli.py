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
from pathlib import Path

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


def start_serve_process(*flags: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`powersampling serve` on the demo toy engine in its own process, once it serves.

    Returns the process, its address and the log lines it wrote until then.
    """
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
            *flags,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=environment_without_server_settings(),
    )
    assert process.stderr is not None
    address = ""
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        address = match[1] if match else address
        if "serving toy-demo" in line:
            break
    if not address:
        process.kill()
        process.wait()
        raise AssertionError("the server did not start: " + "".join(lines))
    return process, address, lines


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`powersampling serve` on the demo toy engine in its own process; yields it and its address."""
    process, address, _ = start_serve_process()
    try:
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


def test_engine_knob_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerConfig] = []

    async def fake_serve(config: ServerConfig) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(cli, "_serve_until_signalled", fake_serve)
    monkeypatch.setenv("POWERSAMPLING_VLLM_PIPELINE_PARALLEL_SIZE", "2")
    argv = ["serve", "--engine", "vllm", "--vllm-tensor-parallel-size", "8", "--engine-max-batch-size", "32"]
    assert cli.main([*argv, "--vllm-distributed-executor-backend", "ray"]) == 0
    (config,) = seen
    options = config.engine_options()
    assert (options["tensor_parallel_size"], options["pipeline_parallel_size"]) == (8, 2)
    assert (options["max_num_seqs"], options["distributed_executor_backend"]) == (32, "ray")


def test_a_second_signal_stops_at_once() -> None:
    """The first SIGTERM starts a 60 s drain; a second one ends it now, cancelling what still runs."""
    import grpc
    from powersampling._proto.v1 import reasoning_pb2 as pb
    from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

    process, address, lines = start_serve_process("--drain-timeout-s", "60")
    try:
        assert any("loading the toy demo model" in line for line in lines), lines
        assert not any("qwen" in line for line in lines), lines  # it says what it really loads
        with grpc.insecure_channel(address) as channel:
            # A long request (seconds of work) that keeps the drain busy.
            request = pb.ReasonRequest(
                text="hello", max_new_tokens=3000, block_size=10, mcmc_steps=20, seed=1
            )
            call = pb_grpc.ReasoningServiceStub(channel).Reason(request)
            assert next(call).HasField("started")
            process.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=1)  # draining: the request may still finish
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--host", "not a host"], "host: 'not a host' is neither an IP address nor a host name"),
        (["--auth-tokens", '{"": "t"}'], "auth_tokens: a token must not be empty"),
        (["--auth-token", ""], "auth_token: must not be empty"),
        (["--auth-tokens-file", "/no/such/tokens.json"], "auth_tokens_file: cannot read"),
    ],
)
def test_bad_serve_settings_print_one_line_naming_the_problem(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--engine", "toy", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"powersampling: error: {expected}"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_tls_key_that_is_not_the_certificates_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.server.test_security import write_self_signed_certificate

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = write_self_signed_certificate(tmp_path / "a")
    _, other_key = write_self_signed_certificate(tmp_path / "b")
    argv = ["serve", "--engine", "toy", "--host", "127.0.0.1", "--port", "0"]
    assert cli.main([*argv, "--tls-cert-file", str(cert), "--tls-key-file", str(other_key)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("powersampling: error: tls_key_file: ") and "is not the private key" in err, err
