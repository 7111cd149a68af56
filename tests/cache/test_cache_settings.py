"""The cache settings of `serve`: each a flag and a POWERSAMPLING_* variable, reaching the Redis cache."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.cache.codec import mac_key
from powersampling.cache.redis_cache import RedisChainCache
from powersampling.cli import build_parser, main
from powersampling.config import ServerConfig, load_config
from powersampling.errors import InvalidArgument
from powersampling.server.app import serve
from powersampling.telemetry.base import NoTelemetry

from tests.server.support import no_server_environment  # noqa: F401

from .support import RedisServer, make_engine

SECRET = "a secret of the replicas, 32 chars"
SETTINGS = {  # flag/variable value → what RedisCacheSettings holds
    "cache_answer_ttl_s": ("120", "ttl_s", 120.0),
    "cache_checkpoint_ttl_s": ("30.5", "partial_ttl_s", 30.5),
    "cache_timeout_s": ("0.5", "timeout_s", 0.5),
    "cache_connect_timeout_s": ("2", "connect_timeout_s", 2.0),
    "cache_max_value_bytes": ("65536", "max_value_bytes", 65536),
}


def flags_config(*argv: str) -> ServerConfig:
    """The config `powersampling serve ARGV` runs with (flags over the environment)."""
    args = build_parser().parse_args(["serve", *argv])
    return load_config(
        **{name: getattr(args, name) for name in ServerConfig.model_fields if hasattr(args, name)}
    )


def test_defaults_are_the_caches_own() -> None:
    defaults = RedisChainCache.from_url("redis://h:1/0").settings
    options = load_config().cache_options()
    assert options["ttl_s"] == defaults.ttl_s and options["partial_ttl_s"] == defaults.partial_ttl_s
    assert options["timeout_s"] == defaults.timeout_s
    assert options["max_value_bytes"] == defaults.max_value_bytes
    assert options["connect_timeout_s"] is None and options["secret"] is None


def _check(config: ServerConfig) -> None:
    settings = RedisChainCache.from_url("redis://h:1/0", **config.cache_options()).settings
    for _name, (_text, attribute, value) in SETTINGS.items():
        assert getattr(settings, attribute) == value, attribute
    assert settings.secret == SECRET


def test_flags_reach_the_cache() -> None:
    argv = [f"--{name.replace('_', '-')}={text}" for name, (text, _, _) in SETTINGS.items()]
    _check(flags_config(*argv, f"--cache-secret={SECRET}"))


def test_environment_reaches_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (text, _, _) in SETTINGS.items():
        monkeypatch.setenv(f"POWERSAMPLING_{name.upper()}", text)
    monkeypatch.setenv("POWERSAMPLING_CACHE_SECRET", SECRET)
    _check(flags_config())
    # A flag wins over its variable.
    assert flags_config("--cache-answer-ttl-s", "7").cache_answer_ttl_s == 7


def test_secret_file_by_flag_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache-secret"
    path.write_text(SECRET + "\n")
    assert flags_config("--cache-secret-file", str(path)).cache_options()["secret"] == SECRET
    monkeypatch.setenv("POWERSAMPLING_CACHE_SECRET_FILE", str(path))
    config = flags_config()
    assert config.cache_options()["secret"] == SECRET
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"cache_secret": ""}, "cache_secret"),  # empty never means "no authentication"
        ({"cache_secret": "too short"}, "cache_secret"),
        ({"cache_secret_file": "/nonexistent/secret"}, "cache_secret_file"),
        ({"cache_answer_ttl_s": 0}, "cache_answer_ttl_s"),
        ({"cache_checkpoint_ttl_s": -1}, "cache_checkpoint_ttl_s"),
        ({"cache_timeout_s": 0}, "cache_timeout_s"),
        ({"cache_max_value_bytes": 100}, "cache_max_value_bytes"),
    ],
)
def test_invalid_cache_settings_name_the_setting(settings: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_config(**settings)
    assert info.value.field == field and "\n" not in info.value.message


def test_secret_and_secret_file_are_exclusive_and_a_short_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    with pytest.raises(InvalidArgument, match="not both") as info:
        load_config(cache_secret=SECRET, cache_secret_file=path)
    assert info.value.field == "cache_secret_file"
    path.write_text("short\n")
    with pytest.raises(InvalidArgument, match="at least 16") as info:
        load_config(cache_secret_file=path)
    assert info.value.field == "cache_secret_file"


def test_help_says_what_happens_without_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--cache-secret-file",
        "--cache-answer-ttl-s",
        "--cache-max-value-bytes",
        "--cache-timeout-s",
    ):
        assert flag in text
    assert "random key per process" in text and "POWERSAMPLING_CACHE_SECRET" in text


def test_a_secret_on_the_command_line_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    # The port is taken, so the server stops at once, after the warning.
    with socket.socket() as taken, caplog.at_level(logging.WARNING):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = ["serve", "--host", "127.0.0.1", "--port", port, "--engine", "toy", "--no-reflection"]
        code = main([*argv, "--cache-secret", SECRET])
    assert code != 0
    assert "--cache-secret-file" in caplog.text and SECRET not in caplog.text


async def test_serve_builds_its_cache_from_the_settings(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    config = load_config(
        host="127.0.0.1",
        port=0,
        reflection=False,
        redis_url=redis_server.url,
        cache_answer_ttl_s=120,
        cache_max_value_bytes=65536,
        cache_secret_file=path,
    )
    running = await serve(config, engine=make_engine(), telemetry=NoTelemetry())
    try:
        cache = running.cache
        assert isinstance(cache, RedisChainCache)
        assert cache.settings.ttl_s == 120 and cache.settings.max_value_bytes == 65536
        assert cache._mac_key == mac_key(SECRET)
        await running.wait_ready(10)
        async with grpc.aio.insecure_channel(running.target) as channel:
            description = await pb_grpc.ReasoningServiceStub(channel).Describe(pb.DescribeRequest())
        shown = dict(description.cache_settings)
        assert (shown["answer_ttl_s"], shown["max_value_bytes"], shown["authenticated"]) == (
            "120.0",
            "65536",
            "true",
        )
        assert SECRET not in str(description)  # whether a secret is set, never the secret
    finally:
        await running.stop(0)
