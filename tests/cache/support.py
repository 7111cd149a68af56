"""Helpers of the cache tests: real redis-server processes on free ports, and a small toy model."""

from __future__ import annotations

import hashlib
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from powersampling.api import ReasonResult
from powersampling.engines.toy import ToyEngine
from powersampling.params import SamplingParams

REDIS_SERVER = shutil.which("redis-server")
TOY_FINGERPRINT = "toy-cache-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process that a test can stop and start again on the same port."""

    def __init__(self, workdir: Path, *extra_args: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, ready_port: int | None = None) -> RedisServer:
        """Start the server and wait until it accepts connections (on `ready_port`, default its port)."""
        args = [
            str(REDIS_SERVER),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", ready_port or self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: like a crash; it keeps no data)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server and return its output (for set-up, not assertions)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.skip("redis-cli is not installed")
        out = subprocess.run(
            [cli, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout


def toy_table(prefix: tuple[int, ...]) -> Sequence[float]:
    """A fixed, prefix-dependent next-token table over 6 tokens (5 = EOS, rare until late)."""
    h = (sum((i + 1) * (t + 3) for i, t in enumerate(prefix[-4:])) * 2654435761) % 1000
    weights = [1.0 + ((h >> k) % 7) for k in range(5)]
    eos = 0.05 if len(prefix) < 30 else 2.0
    return [math.log(w) for w in [*weights, eos]]


def toy_engine_options() -> dict[str, Any]:
    """ToyEngine arguments of the cache tests' model (for subclasses that slow it down or break it)."""
    return {
        "vocab_size": 6,
        "eos_id": 5,
        "next_token_logprobs": toy_table,
        "token_strings": ["a", "b", "c", "d", "e", "<eos>"],
        "fingerprint": TOY_FINGERPRINT,
    }


def make_engine(**options: Any) -> ToyEngine:
    return ToyEngine(**(toy_engine_options() | options))


PROMPT = [0, 1, 2, 3]


def seeded_params(**overrides: object) -> SamplingParams:
    """Several blocks with MCMC steps: 6 blocks of 4 tokens."""
    options: dict[str, object] = {
        "alpha": 4.0,
        "block_size": 4,
        "max_new_tokens": 24,
        "mcmc_steps": 3,
        "seed": 1234,
    }
    options.update(overrides)
    return SamplingParams(**options)  # type: ignore[arg-type]


def result(chain_index: int = 0, **overrides: object) -> ReasonResult:
    """A plausible ReasonResult (for tests of the value format)."""
    fields: dict[str, object] = {
        "text": "abc <ünï> 🙂",
        "token_ids": [0, 1, 2, 4_000_000_000],
        "finish_reason": "eos",
        "tokens_spent": 40,
        "token_budget": None,
        "mcmc_steps": 10,
        "accepted_steps": 4,
        "changed_steps": 2,
        "skipped_steps": 0,
        "acceptance_rate": 0.4,
        "change_rate": 0.2,
        "log_prob": -3.25,
        "latency_s": 0.5,
        "model": "toy",
        "engine": "toy",
        "method": "power",
        "alpha": 4.0,
        "proposal_temperature": 0.25,
        "seed": 2**63 - 1,
        "chain_index": chain_index,
        "prompt_tokens": 4,
        "resumed_from_block": 0,
    }
    fields.update(overrides)
    return ReasonResult(**fields)  # type: ignore[arg-type]


def reseal_publicly(value: bytes, change: dict[str, object]) -> bytes:
    """`value` with its body changed and sealed again the way anyone could: every checksum a reader
    without a secret could check (the former 8-byte BLAKE2b, an unkeyed 32-byte one)."""
    envelope = msgpack.unpackb(value)
    body = msgpack.unpackb(envelope["body"])
    if "results" in body:
        body["results"] = [entry | change for entry in body["results"]]
    else:
        body |= change
    envelope["body"] = msgpack.packb(body)
    envelope["check"] = hashlib.blake2b(envelope["body"], digest_size=8).digest()
    envelope["mac"] = hashlib.blake2b(envelope["body"], digest_size=32).digest()
    return msgpack.packb(envelope)
