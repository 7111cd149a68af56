"""Reliability suite: what hostile or careless clients and a failing Redis do to the service.

Everything runs on this host, over loopback: `powersampling serve --engine toy` subprocesses and a
redis-server of its own on a free port (persistence off, in a temporary directory). Every count and
wait is bounded, and the suite stops by itself (a scenario that overruns its budget is cut off and
reported). It prints one table of figures:

- bad inputs: malformed Reason and Describe calls (wrong wire types as raw bytes, truncated
  messages, out-of-range fields, invalid UTF-8, huge messages): status codes, server crashes;
- bursts of 10x and 50x capacity (max_concurrent_requests + max_queue): completed, refused with
  RESOURCE_EXHAUSTED, anything else;
- clients that never read their streams: how long a fifth request waits, server memory;
- random cancellations: slots leaked (all of capacity must be admitted afterwards);
- Redis SIGKILLed, SIGSTOPped and filled (noeviction, maxmemory reached) under load: failed requests;
- corrupt and forged cache values (garbage, bit flips, other versions, values re-sealed without the
  secret, text that is not its token ids, oversize values, other Redis types): served, failed;
- a replica SIGKILLed mid-request, the request re-sent to another replica sharing the Redis:
  resumed, identical to an uninterrupted run (and, with different secrets, not resumed).

    python benchmarks/reliability.py                  # the full suite (about a minute)
    python benchmarks/reliability.py --quick          # reduced counts (tests/reliability runs it)
    python benchmarks/reliability.py --json out.json  # the figures as JSON too
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "service"), str(REPO / "client" / "src"), str(REPO)]

import grpc  # noqa: E402
import msgpack  # noqa: E402
import redis  # noqa: E402
from powersampling._proto.v1 import reasoning_pb2 as pb  # noqa: E402
from powersampling.api import ReasonResult, reason_async  # noqa: E402
from powersampling.cache.redis_cache import (  # noqa: E402
    KEY_PREFIX,
    decode_completed,
    encode_checkpoint,
    encode_completed,
    mac_key,
)
from powersampling.engines.toy import demo_engine  # noqa: E402
from powersampling.events import ChainState  # noqa: E402
from powersampling.params import SamplingParams  # noqa: E402
from powersampling.sampler import chain_seed  # noqa: E402

from tests.cache.replicas import ServeProcess, kill_mid_request, reason_request  # noqa: E402
from tests.cache.support import RedisServer, reseal_publicly  # noqa: E402

REASON = "/powersampling.v1.ReasoningService/Reason"
DESCRIBE = "/powersampling.v1.ReasoningService/Describe"
SECRET = "reliability-suite-secret-0123456789"
OTHER_SECRET = "not-the-replicas-secret-9876543210"
PROMPT_IDS = [1, 2, 3]
CAP_BYTES = 65536  # the servers' --cache-max-value-bytes: oversize values need not be huge


@dataclass(frozen=True)
class Mode:
    bursts: tuple[int, ...] = (10, 50)
    cancellations: int = 300
    never_read_wait_s: float = 30.0  # the fifth request's deadline
    stream_idle_timeout_s: float = 2.0  # the server's bound on a stream nobody reads
    requests_per_redis_fault: int = 30
    scenario_budget_s: float = 180.0
    resume_chains: int = 8  # n of the request killed mid-way (a few seconds of toy-model work)


FULL = Mode()
QUICK = Mode(
    cancellations=40,
    never_read_wait_s=20.0,
    requests_per_redis_fault=6,
    scenario_budget_s=60.0,
    resume_chains=4,
)


@dataclass
class Figures:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, scenario: str, name: str, value: Any, expected: str = "") -> None:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        self.rows.append((scenario, name, shown, expected))
        self.values[f"{scenario}: {name}"] = value

    def table(self) -> str:
        header = ("scenario", "figure", "value", "expected")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines.append("-+-".join("-" * w for w in widths))
        lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def small_params(seed: int | None = None, tokens: int = 32, mcmc: int = 2, n: int = 1) -> SamplingParams:
    return SamplingParams(alpha=4.0, block_size=8, max_new_tokens=tokens, mcmc_steps=mcmc, seed=seed, n=n)


def small_request(
    seed: int | None = None, *, tenant: str = "", bypass: bool = False, tokens: int = 32, mcmc: int = 2
) -> pb.ReasonRequest:
    request = reason_request(PROMPT_IDS, small_params(seed, tokens, mcmc), tenant=tenant)
    if seed is None:
        request.ClearField("seed")
    if bypass:
        request.cache_policy = pb.CACHE_POLICY_BYPASS
    return request


@dataclass
class Outcome:
    code: grpc.StatusCode
    status: int = 0  # the Final's cache status
    answers: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    seconds: float = 0.0


async def call(
    channel: grpc.aio.Channel, request: pb.ReasonRequest | bytes, timeout_s: float = 30.0
) -> Outcome:
    """One Reason call read to its end (raw bytes are sent as they are)."""
    method = channel.unary_stream(
        REASON,
        request_serializer=(lambda b: b)
        if isinstance(request, bytes)
        else pb.ReasonRequest.SerializeToString,
        response_deserializer=pb.ReasonEvent.FromString,
    )
    started = time.perf_counter()
    outcome = Outcome(grpc.StatusCode.OK)
    try:
        async for event in method(request, timeout=timeout_s):
            if event.HasField("final"):
                outcome.status = event.final.cache_status
                outcome.answers = [(tuple(a.token_ids), a.text) for a in event.final.answers]
    except grpc.aio.AioRpcError as exc:
        outcome.code = exc.code()
    outcome.seconds = time.perf_counter() - started
    return outcome


async def serving(target: str) -> bool:
    """Whether the server answers a small valid request."""
    async with grpc.aio.insecure_channel(target) as channel:
        outcome = await call(channel, small_request(bypass=True, tokens=8), timeout_s=30.0)
    return outcome.code == grpc.StatusCode.OK and bool(outcome.answers)


async def caching_back(target: str, limit_s: float = 40.0) -> float:
    """Seconds until a seeded request is cached again (not DISABLED), polling; inf if not within
    `limit_s` (the circuit breaker's cool-down is at most 30 s)."""
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        while time.perf_counter() - started < limit_s:
            outcome = await call(channel, small_request(random.randrange(2**40), tenant="probe", tokens=8))
            if outcome.code == grpc.StatusCode.OK and outcome.status != pb.CACHE_STATUS_DISABLED:
                return time.perf_counter() - started
            await asyncio.sleep(0.1)
    return math.inf


def rss_mb(process: ServeProcess) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def bad_reason_inputs() -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of malformed Reason requests, each on a small valid base."""
    base = small_request(bypass=True, tokens=16, mcmc=1)
    raw = base.SerializeToString()
    junk_by_wire_type = {
        0: _varint(2**64 - 1),
        1: struct.pack("<d", math.nan),
        2: _varint(3) + b"\xff\xfe\xfd",
        5: struct.pack("<f", -1.0),
    }
    for number in (1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 30, 31, 32, 99):
        for wire_type, junk in junk_by_wire_type.items():
            yield f"field {number} wire type {wire_type}", raw + _field(number, wire_type, junk)
    for cut in (1, 2, 3, 5, 8, len(raw) - 1):
        yield f"truncated at {cut}", raw[:cut]
    yield "unknown wire type 7", raw + b"\x0f\x00"
    yield "varint never ends", raw + b"\x58" + b"\xff" * 11
    yield "length past the end", raw + _field(1, 2, _varint(1000) + b"ab")
    yield "group tags", raw + b"\x0b\x0c"
    for name, payload in (
        ("text", _field(1, 2, _varint(2) + b"\xc3\x28")),
        ("tenant", _field(32, 2, _varint(1) + b"\xff")),
        ("stop", _field(18, 2, _varint(2) + b"\xed\xa0")),
        ("message content", _field(2, 2, _varint(6) + _field(1, 2, _varint(1) + b"\x80") + b"\x12\x01\x41")),
    ):
        yield f"invalid UTF-8 in {name}", raw + payload

    def changed(name: str, **fields: Any) -> tuple[str, bytes]:
        request = pb.ReasonRequest()
        request.CopyFrom(base)
        for key, value in fields.items():
            if key == "stop":
                request.stop.extend(value)
            elif key == "messages":
                request.messages.messages.extend(value)
            elif key == "token_ids":
                request.token_ids.ids.extend(value)
            else:
                setattr(request, key, value)
        return name, request.SerializeToString()

    for alpha in (0.0, 0.5, -1.0, math.nan, math.inf, 1e308):
        yield changed(f"alpha {alpha}", alpha=alpha)
    for temperature in (0.0, -1.0, math.nan, math.inf):
        yield changed(f"proposal_temperature {temperature}", proposal_temperature=temperature)
    yield changed("block_size 0", block_size=0)
    yield changed("block_size > max_new_tokens", block_size=1000)
    yield changed("max_new_tokens 0", max_new_tokens=0)
    yield changed("max_new_tokens 2^32-1", max_new_tokens=2**32 - 1)
    yield changed("token_budget 0", token_budget=0)
    yield changed("token_budget below max_new_tokens", token_budget=3)
    yield changed("n 0", n=0)
    yield changed("n 10000", n=10000)
    yield changed("method 99", method=99)
    yield changed("cache_policy 99", cache_policy=99)
    yield changed("empty stop string", stop=[""])
    yield changed("1000 stop strings", stop=["x"] * 1000)
    yield changed("stop string of 100k chars", stop=["x" * 100_000])
    yield changed("token id out of vocabulary", token_ids=[10**9])
    yield changed("tenant of 100k chars", tenant="t" * 100_000)
    yield changed("text outside the vocabulary", text="HELLO \u2603")
    yield changed("empty text", text="")
    yield changed("empty messages", messages=[])
    yield changed("message with a bad role", messages=[pb.ChatMessage(role="wizard", content="hi")])
    yield changed("NUL in text", text="a\0b")
    yield changed("chat with token ids", chat=True)
    yield "no prompt at all", b""
    yield "prompt over max_prompt_chars", changed("", text="a" * 300_000)[1]
    yield "message over max_message_bytes (5 MB)", changed("", text="a" * (5 << 20))[1]
    yield "message of 40 MB", b"\x0a" + _varint(40 << 20) + b"a" * (40 << 20)


async def bad_inputs(replica: ServeProcess, figures: Figures) -> None:
    codes: Counter[str] = Counter()
    seconds: list[float] = []
    count = 0
    async with grpc.aio.insecure_channel(replica.target) as channel:
        for _name, payload in bad_reason_inputs():
            outcome = await call(channel, payload, timeout_s=3.0)
            codes[outcome.code.name] += 1
            seconds.append(outcome.seconds)
            count += 1
        describe = channel.unary_unary(DESCRIBE, request_serializer=lambda b: b, response_deserializer=None)
        for payload in (b"\xff", b"\x0a\x05abc", b"\x08" + b"\xff" * 11, b"\x0f", os.urandom(64)):
            try:
                await describe(payload, timeout=3.0)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            count += 1
    alive = replica.process.poll() is None and await serving(replica.target)
    tracebacks = replica.log.count("Traceback")
    figures.add("bad inputs", "malformed requests sent", count, ">= 100")
    for code, number in sorted(codes.items()):
        # OK: parsable after all (a field with a mismatched wire type is an unknown field, skipped).
        figures.add("bad inputs", f"answered {code}", number)
    figures.add("bad inputs", "server crashes", 0 if alive else 1, "0")
    figures.add("bad inputs", "tracebacks in the server log", tracebacks, "0")
    figures.add("bad inputs", "slowest answer, s", max(seconds))


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


async def bursts(replica: ServeProcess, capacity: int, mode: Mode, figures: Figures) -> None:
    async with grpc.aio.insecure_channel(replica.target) as channel:
        for multiple in mode.bursts:
            size = multiple * capacity
            outcomes = await asyncio.gather(
                *(call(channel, small_request(bypass=True, tokens=64, mcmc=4)) for _ in range(size))
            )
            codes = Counter(o.code for o in outcomes)
            completed = sum(1 for o in outcomes if o.code == grpc.StatusCode.OK and o.answers)
            refused = codes[grpc.StatusCode.RESOURCE_EXHAUSTED]
            figures.add(f"burst {multiple}x capacity", "requests", size)
            figures.add(f"burst {multiple}x capacity", "completed", completed, f">= {capacity}")
            figures.add(f"burst {multiple}x capacity", "RESOURCE_EXHAUSTED", refused)
            figures.add(f"burst {multiple}x capacity", "other outcomes", size - completed - refused, "0")


async def never_reading_clients(replica: ServeProcess, stuck: int, mode: Mode, figures: Figures) -> None:
    """`stuck` streams with large answers that are never read, then one more request."""
    before = rss_mb(replica)
    channels = [grpc.insecure_channel(replica.target) for _ in range(stuck)]
    big = small_request(bypass=True, tokens=4000, mcmc=0)
    big.block_size = 1
    calls = []
    try:
        for channel in channels:
            stub = channel.unary_stream(
                REASON,
                request_serializer=pb.ReasonRequest.SerializeToString,
                response_deserializer=pb.ReasonEvent.FromString,
            )
            calls.append(stub(big))  # started, never iterated: nothing is read
        await asyncio.sleep(2.0)  # let them sample and fill their buffers
        async with grpc.aio.insecure_channel(replica.target) as channel:
            outcome = await call(
                channel, small_request(bypass=True, tokens=8), timeout_s=mode.never_read_wait_s
            )
        during = rss_mb(replica)
    finally:
        for c in calls:
            c.cancel()
        for channel in channels:
            channel.close()
    scenario = f"{stuck} clients never reading (idle timeout {mode.stream_idle_timeout_s:g} s)"
    figures.add(scenario, f"request {stuck + 1}: outcome", outcome.code.name, "OK")
    figures.add(scenario, f"request {stuck + 1}: waited, s", outcome.seconds, f"< {mode.never_read_wait_s:g}")
    figures.add(scenario, "server memory growth, MB", during - before)
    figures.add(scenario, "server still serving after", await serving(replica.target), "True")


async def cancellations(replica: ServeProcess, capacity: int, mode: Mode, figures: Figures) -> None:
    rng = random.Random(20261204)
    cancelled = 0
    async with grpc.aio.insecure_channel(replica.target) as channel:
        stub = channel.unary_stream(
            REASON,
            request_serializer=pb.ReasonRequest.SerializeToString,
            response_deserializer=pb.ReasonEvent.FromString,
        )

        async def cancel_after(delay_s: float) -> None:
            nonlocal cancelled
            stream = stub(small_request(bypass=True, tokens=256, mcmc=4), timeout=30.0)
            deadline = asyncio.timeout(delay_s)
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                async with deadline:  # cancelling the read cancels the call
                    async for _ in stream:
                        pass
            if deadline.expired():
                stream.cancel()  # a no-op when cancelling the read has ended the call
                cancelled += 1

        for start in range(0, mode.cancellations, 2 * capacity):
            wave = min(2 * capacity, mode.cancellations - start)
            await asyncio.gather(*(cancel_after(rng.uniform(0.0, 0.3)) for _ in range(wave)))
        await asyncio.sleep(0.5)  # let the server see the last cancellations
        # No leaked slot: a full capacity's worth of concurrent requests is admitted.
        outcomes = await asyncio.gather(
            *(call(channel, small_request(bypass=True, tokens=64, mcmc=4)) for _ in range(capacity))
        )
    admitted = sum(1 for o in outcomes if o.code == grpc.StatusCode.OK)
    figures.add("random cancellations", "requests", mode.cancellations)
    figures.add("random cancellations", "cancelled mid-stream", cancelled)
    figures.add("random cancellations", "slots leaked", capacity - admitted, "0")


# ---------------------------------------------------------------------------------------------
# Redis faults
# ---------------------------------------------------------------------------------------------


async def redis_faults(replica: ServeProcess, store: RedisServer, mode: Mode, figures: Figures) -> None:
    count = mode.requests_per_redis_fault
    seeds = iter(range(10_000, 1_000_000))
    assert store.process is not None

    async def load(during: Callable[[int], Awaitable[None]]) -> tuple[int, Counter[str], float]:
        failed, statuses, slowest = 0, Counter[str](), 0.0
        async with grpc.aio.insecure_channel(replica.target) as channel:
            for i in range(count):
                await during(i)
                outcome = await call(channel, small_request(next(seeds), tenant="faults"), timeout_s=30.0)
                failed += outcome.code != grpc.StatusCode.OK or not outcome.answers
                statuses[pb.CacheStatus.Name(outcome.status).removeprefix("CACHE_STATUS_")] += 1
                slowest = max(slowest, outcome.seconds)
        return failed, statuses, slowest

    async def kill_then_restart(i: int) -> None:
        if i == count // 3:
            store.stop()  # SIGKILL
        elif i == 2 * count // 3:
            await asyncio.to_thread(store.start)

    async def stop_then_continue(i: int) -> None:
        assert store.process is not None
        if i == 0:
            os.kill(store.process.pid, signal.SIGSTOP)
        elif i == count - 1:
            os.kill(store.process.pid, signal.SIGCONT)

    async def nothing(_i: int) -> None:
        return None

    for name, during in (
        ("SIGKILL, then restart", kill_then_restart),
        ("SIGSTOP, then SIGCONT", stop_then_continue),
    ):
        failed, statuses, slowest = await load(during)
        scenario = f"Redis {name}"
        figures.add(scenario, "requests failed", failed, "0")
        figures.add(scenario, "cache statuses", dict(statuses))
        figures.add(scenario, "slowest request, s", slowest)
        figures.add(scenario, "caching back within, s", await caching_back(replica.target), "< 35")

    client = redis.Redis.from_url(store.url)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) + (1 << 20)))
        filler = 0
        with contextlib.suppress(redis.ResponseError):  # OOM: full
            while filler < 10_000:
                client.set(f"filler:{filler}", b"x" * 4096)
                filler += 1
        failed, statuses, slowest = await load(nothing)
        figures.add("Redis full (noeviction)", "requests failed", failed, "0")
        figures.add("Redis full (noeviction)", "cache statuses", dict(statuses))
        figures.add("Redis full (noeviction)", "slowest request, s", slowest)
    finally:
        client.config_set("maxmemory", "0")
        client.flushall()
        client.close()


# ---------------------------------------------------------------------------------------------
# Corrupt and forged values
# ---------------------------------------------------------------------------------------------


DONE_CORRUPTIONS = (
    "garbage",
    "empty",
    "truncated",
    "one bit flipped",
    "another version",
    "re-sealed without the secret, text PWNED",
    "re-sealed without the secret, other ids",
    "sealed with another secret",
    "real secret, text PWNED",
    "oversize (16x the cap)",
    "another Redis type",
)
CHAIN_CORRUPTIONS = (
    "checkpoint: garbage",
    "checkpoint: chosen tokens, no secret",
    "checkpoint: chosen tokens, another secret",
    "checkpoint: oversize",
)


def done_corruptions(digest: str, valid: bytes, results: list[ReasonResult]) -> dict[str, bytes | None]:
    """Values to put in place of a completed answer (None: a list, another Redis type)."""
    flipped = bytearray(valid)
    flipped[len(flipped) // 2] ^= 0x01
    envelope = msgpack.unpackb(valid)
    other_ids = [dataclasses.replace(r, token_ids=[(t + 1) % 46 for t in r.token_ids]) for r in results]
    return {
        "garbage": os.urandom(200),
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "one bit flipped": bytes(flipped),
        "another version": msgpack.packb(envelope | {"v": envelope["v"] + 1}),
        "re-sealed without the secret, text PWNED": reseal_publicly(valid, {"text": "PWNED"}),
        "re-sealed without the secret, other ids": encode_completed(digest, other_ids),
        "sealed with another secret": encode_completed(digest, other_ids, key=mac_key(OTHER_SECRET)),
        "real secret, text PWNED": encode_completed(
            digest, [dataclasses.replace(r, text="PWNED") for r in results], key=mac_key(SECRET)
        ),
        "oversize (16x the cap)": b"\0" * (16 * CAP_BYTES),
        "another Redis type": None,
    }


def chain_corruptions(digest: str, seed: int) -> dict[str, bytes]:
    chosen = ChainState(
        0, chain_seed(seed, 0), 1, (1,) * 8, (-1.0,) * 8, (-1.0,) * 8, False, None, 8, 0, 0, 0, 0
    )
    return {
        "checkpoint: garbage": os.urandom(100),
        "checkpoint: chosen tokens, no secret": encode_checkpoint(digest, chosen),
        "checkpoint: chosen tokens, another secret": encode_checkpoint(
            digest, chosen, key=mac_key(OTHER_SECRET)
        ),
        "checkpoint: oversize": b"\0" * (16 * CAP_BYTES),
    }


def _request_keys(client: redis.Redis, tenant: str) -> tuple[str, str, str]:
    """The (done, chains, digest) of the one request stored under `tenant` (a tenant per request)."""
    from powersampling.cache.redis_cache import tenant_hash

    names = [n.decode() for n in client.scan_iter(f"{KEY_PREFIX}:{tenant_hash(tenant)}:*")]
    (done,) = [n for n in names if n.endswith(":done")]
    digest = done.split("{")[1].split("}")[0]
    return done, done.removesuffix(":done") + ":chains", digest


async def corrupt_values(replica: ServeProcess, store: RedisServer, figures: Figures) -> None:
    await caching_back(replica.target)
    client = redis.Redis.from_url(store.url)
    served = failed = tried = 0
    outcomes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(replica.target) as channel:
        for i, (kind, target) in enumerate(
            [("done", name) for name in DONE_CORRUPTIONS] + [("chain", name) for name in CHAIN_CORRUPTIONS]
        ):
            tenant, seed = f"corrupt-{i}", 500 + i
            request = small_request(seed, tenant=tenant)
            first = await call(channel, request)
            done, chains, digest = _request_keys(client, tenant)
            valid = client.get(done)
            assert isinstance(valid, bytes) and first.answers
            if kind == "done":
                results = decode_completed(digest, valid, key=mac_key(SECRET))
                value = done_corruptions(digest, valid, results)[target]
                client.delete(done)
                if value is None:
                    client.rpush(done, b"x")
                else:
                    client.set(done, value)
            else:
                client.delete(done)
                client.hset(chains, "0", chain_corruptions(digest, seed)[target])
            again = await call(channel, request)
            tried += 1
            status = pb.CacheStatus.Name(again.status).removeprefix("CACHE_STATUS_")
            outcomes[status] += 1
            failed += again.code != grpc.StatusCode.OK
            # Served: the answer came from the bad value (a HIT or RESUMED that differs from the truth).
            served += again.code == grpc.StatusCode.OK and again.answers != first.answers
    client.close()
    figures.add("corrupt and forged values", "values tried", tried)
    figures.add("corrupt and forged values", "served", served, "0")
    figures.add("corrupt and forged values", "requests failed", failed, "0")
    figures.add("corrupt and forged values", "cache statuses after", dict(outcomes), "no HIT, no RESUMED")
    tracebacks = replica.log.count("Traceback")
    figures.add("corrupt and forged values", "tracebacks in the server log", tracebacks, "0")


# ---------------------------------------------------------------------------------------------
# A replica SIGKILLed mid-request
# ---------------------------------------------------------------------------------------------


async def resume_across_replicas(store: RedisServer, mode: Mode, figures: Figures) -> None:
    params = SamplingParams(
        alpha=4.0, block_size=8, max_new_tokens=512, mcmc_steps=4, seed=2027, n=mode.resume_chains
    )
    engine = demo_engine()
    try:
        expected = [(tuple(r.token_ids), r.text) for r in await reason_async(PROMPT_IDS, engine, params)]
    finally:
        await engine.close()
    for label, secrets in (("same secret", (SECRET, SECRET)), ("different secrets", (SECRET, OTHER_SECRET))):
        redis.Redis.from_url(store.url).flushall()
        first, second = await asyncio.gather(
            *(asyncio.to_thread(ServeProcess, store.url, secret=s, args=_CACHE_ARGS) for s in secrets)
        )
        try:
            request = reason_request(PROMPT_IDS, params, tenant="replicas")
            _, events = await asyncio.to_thread(kill_mid_request, first, second, request, store.url)
        finally:
            first.kill()
            second.kill()
        started, final = events[0].started, events[-1].final
        answers = [(tuple(a.token_ids), a.text) for a in final.answers]
        scenario = f"replica SIGKILLed, {label}"
        resumed = started.cache_status == pb.CACHE_STATUS_RESUMED
        figures.add(
            scenario, "resumed on the other replica", resumed, "True" if label == "same secret" else "False"
        )
        figures.add(scenario, "resumed from block", started.resumed_from_block)
        figures.add(scenario, "answer identical to an uninterrupted run", answers == expected, "True")


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

_CACHE_ARGS = ["--cache-max-value-bytes", str(CAP_BYTES), "--cache-timeout-s", "0.25"]


async def run(mode: Mode, workdir: Path) -> Figures:
    figures = Figures()
    store = RedisServer(workdir / "redis").start()
    concurrent, queue = 2, 2
    capacity = concurrent + queue
    args = ["--max-concurrent-requests", str(concurrent), "--max-queue", str(queue), *_CACHE_ARGS]
    replica = await asyncio.to_thread(ServeProcess, store.url, secret=SECRET, args=args)
    stuck_replica: ServeProcess | None = None

    async def bounded(name: str, scenario: Awaitable[None]) -> None:
        started = time.perf_counter()
        budget = asyncio.timeout(mode.scenario_budget_s)
        try:
            async with budget:
                await scenario
        except TimeoutError:
            if not budget.expired():
                raise
            figures.add(name, "cut off after its time budget, s", mode.scenario_budget_s, "not cut off")
        except Exception as exc:  # a broken scenario is a figure too; the others still run
            figures.add(name, "scenario error", f"{type(exc).__name__}: {exc}"[:120], "none")
        figures.add(name, "scenario time, s", time.perf_counter() - started)

    try:
        await bounded("bad inputs", bad_inputs(replica, figures))
        await bounded("bursts", bursts(replica, capacity, mode, figures))
        await bounded("random cancellations", cancellations(replica, capacity, mode, figures))
        await bounded("Redis faults", redis_faults(replica, store, mode, figures))
        await bounded("corrupt and forged values", corrupt_values(replica, store, figures))
        figures.add("server", "crashed during the suite", replica.process.poll() is not None, "False")
        # Never-reading clients last, on a server of its own (capacity 4): they may wedge it.
        stuck_args = ["--max-concurrent-requests", "4", "--max-queue", "4"]
        stuck_args += ["--stream-idle-timeout-s", str(mode.stream_idle_timeout_s)]
        stuck_replica = await asyncio.to_thread(ServeProcess, None, args=stuck_args)
        await bounded("never-reading clients", never_reading_clients(stuck_replica, 4, mode, figures))
        await bounded("resume across replicas", resume_across_replicas(store, mode, figures))
    finally:
        replica.kill()
        if stuck_replica is not None:
            stuck_replica.kill()
        store.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced counts and waits (about 30 s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("reliability: redis-server is not installed", file=sys.stderr)
        return 2
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="powersampling-reliability-") as tmp:
        figures = asyncio.run(run(mode, Path(tmp)))
    print(figures.table())
    print(
        f"\n{'quick' if args.quick else 'full'} suite: {time.perf_counter() - started:.0f} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures.values, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
