"""Cache-hit latency over gRPC, and Redis memory per cached chain.

Starts a redis-server of its own (persistence off, in a temporary directory) unless --redis-url is
given, and a powersampling server in a subprocess on a toy model that never emits EOS (so every
answer has exactly --max-new-tokens tokens, ~4 characters of text each, like a real tokenizer).
It answers one seeded request once (the miss that stores it), then sends the same request
--requests times, one after the other, and reports the end-to-end latency of those hits (call to
Final message) and of the bare Redis read behind them. Then it measures, with MEMORY USAGE, the
completed entry and a checkpoint of the same length (float32 log-probabilities, as real engines
produce; float64 for the toy engine) under the default settings.

    python benchmarks/cache_latency.py                       # 3072-token chains, 1000 hits
    python benchmarks/cache_latency.py --max-new-tokens 512 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The server subprocess and this process read each other's values: they need the same cache secret.
CACHE_SECRET = "cache-latency-benchmark-secret"
TOKEN_TEXT = ["the ", "and ", "of, ", "to. ", "is ", "in ", "it ", "for ", "on ", "at ", "by ", "as "]


def toy_engine():  # type: ignore[no-untyped-def]
    """A toy model over 12 four-character tokens plus an EOS it never emits."""
    from powersampling.engines.toy import ToyEngine

    rng = np.random.default_rng(7)
    table = rng.normal(size=(len(TOKEN_TEXT) + 1, len(TOKEN_TEXT) + 1))
    table[:, -1] = -np.inf  # never EOS: every answer has max_new_tokens tokens

    def next_token_logprobs(prefix: tuple[int, ...]) -> np.ndarray:
        return table[prefix[-1] if prefix else 0]

    return ToyEngine(
        vocab_size=len(TOKEN_TEXT) + 1,
        eos_id=len(TOKEN_TEXT),
        next_token_logprobs=next_token_logprobs,
        token_strings=[*TOKEN_TEXT, "</s>"],
        name="toy-cache-bench",
        fingerprint="toy-cache-bench",
    )


async def serve_forever(redis_url: str) -> None:
    """The --serve mode: a server on the toy model with the default cache settings."""
    from powersampling.cache.redis_cache import RedisChainCache
    from powersampling.config import ServerConfig
    from powersampling.server.app import serve
    from powersampling.telemetry.base import NoTelemetry

    config = ServerConfig(host="127.0.0.1", port=0, engine="toy", reflection=False)
    running = await serve(
        config,
        engine=toy_engine(),
        cache=RedisChainCache.from_url(redis_url, secret=CACHE_SECRET),
        telemetry=NoTelemetry(),
    )
    await running.wait_ready(60.0)
    print(f"PORT {running.port}", flush=True)
    await running.wait_for_termination()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
         "--appendonly", "no", "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.01)
    process.kill()
    sys.exit("redis-server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def describe(label: str, latencies_ms: list[float]) -> str:
    return (
        f"{label}: p50 {percentile(latencies_ms, 50):.2f} ms, p99 {percentile(latencies_ms, 99):.2f} ms, "
        f"mean {statistics.fmean(latencies_ms):.2f} ms over {len(latencies_ms)}"
    )


def grpc_hits(port: int, args: argparse.Namespace) -> tuple[float, list[float]]:
    import grpc
    from powersampling._proto.v1 import reasoning_pb2 as pb
    from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

    request = pb.ReasonRequest(
        token_ids=pb.TokenIds(ids=[0, 1, 2]),
        max_new_tokens=args.max_new_tokens,
        mcmc_steps=args.mcmc_steps,
        seed=1,
        tenant="bench",
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        started = time.perf_counter()
        (*_, final) = stub.Reason(request, timeout=600)
        miss_s = time.perf_counter() - started
        assert final.final.cache_status == pb.CACHE_STATUS_MISS, final
        assert len(final.final.answers[0].token_ids) == args.max_new_tokens
        latencies = []
        for _ in range(args.requests):
            started = time.perf_counter()
            events = list(stub.Reason(request, timeout=60))
            latencies.append((time.perf_counter() - started) * 1000.0)
            assert events[-1].final.cache_status == pb.CACHE_STATUS_HIT
    return miss_s, latencies


async def redis_figures(redis_url: str, args: argparse.Namespace) -> None:
    from powersampling.cache.base import CacheKey
    from powersampling.cache.redis_cache import KEY_PREFIX, RedisChainCache, RedisKeys
    from powersampling.events import ChainState
    from redis.asyncio import Redis

    r = Redis.from_url(redis_url)
    (done_key,) = [k async for k in r.scan_iter(f"{KEY_PREFIX}:*:done")]
    done_bytes = await r.memory_usage(done_key, samples=0)
    value_bytes = await r.strlen(done_key)

    # The bare read behind a hit, without gRPC: the same entry through RedisChainCache.
    digest = done_key.decode().split("{")[1].split("}")[0]
    tenant_key = CacheKey("bench", digest)
    cache = RedisChainCache.from_url(redis_url, secret=CACHE_SECRET)
    assert await cache.get_completed(tenant_key) is not None
    reads = []
    for _ in range(args.requests):
        started = time.perf_counter()
        await cache.get_completed(tenant_key)
        reads.append((time.perf_counter() - started) * 1000.0)

    # A checkpoint of the same length, as real (float32) and toy (float64) engines write it.
    rng = np.random.default_rng(0)
    n = args.max_new_tokens
    checkpoint = {}
    for label, dtype in (("float32", np.float32), ("float64", np.float64)):
        logp = tuple(float(x) for x in (-rng.exponential(size=n)).astype(dtype))
        state = ChainState(0, 1, 16, tuple(int(t) for t in rng.integers(0, 151_000, n)), logp, logp,
                           False, None, 10 * n, 160, 40, 20, 0)  # fmt: skip
        key = CacheKey("bench-" + label, digest)
        await cache.put_checkpoint(key, state)
        chains = RedisKeys.of(key).chains
        checkpoint[label] = (await r.memory_usage(chains, samples=0), await r.hstrlen(chains, "0"))
    await cache.close()
    await r.aclose()

    print(describe("RedisChainCache.get_completed (no gRPC)", reads))
    print(f"completed entry of one {n}-token chain: {done_bytes} B in Redis (value {value_bytes} B)")
    for label, (in_redis, value) in checkpoint.items():
        print(
            f"checkpoint of one {n}-token chain, {label} log-probs: {in_redis} B in Redis (value {value} B)"
        )
    print(
        f"=> a finished {n}-token chain costs ~{done_bytes / 1024:.1f} KiB; one in progress "
        f"~{checkpoint['float32'][0] / 1024:.1f} KiB (float32 engines) or "
        f"~{checkpoint['float64'][0] / 1024:.1f} KiB (float64)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting one (it must be empty-ish)")
    parser.add_argument("--requests", type=int, default=1000, help="cache hits to time")
    parser.add_argument("--max-new-tokens", type=int, default=3072)
    parser.add_argument("--mcmc-steps", type=int, default=1, help="only shortens the warm-up miss")
    parser.add_argument("--serve", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_forever(args.serve))
        return

    with tempfile.TemporaryDirectory() as workdir:
        redis_process = None
        redis_url = args.redis_url
        if redis_url is None:
            redis_process, redis_url = start_redis(workdir)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "service"),
                                            env.get("PYTHONPATH", "")])  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", redis_url], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("PORT "):
                sys.exit("the server did not start")
            miss_s, latencies = grpc_hits(int(line.split()[1]), args)
            print(f"warm-up miss ({args.max_new_tokens} tokens, toy engine): {miss_s:.2f} s")
            print(describe("cache hit over gRPC (Reason call to Final)", latencies))
            asyncio.run(redis_figures(redis_url, args))
        finally:
            server.kill()
            server.wait()
            if redis_process is not None:
                redis_process.kill()
                redis_process.wait()


if __name__ == "__main__":
    main()
