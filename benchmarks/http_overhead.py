"""HTTP vs gRPC: the overhead per request on the toy engine, and cache-hit latency, side by side.

Starts a redis-server of its own (persistence off, in a temporary directory) and one powersampling
server in a subprocess (`serve --engine toy --http-port ...`: the demo toy model), then, one request
at a time and alternating the transports so both see the same machine:

* the same small request over gRPC (a Reason stream read to its Final) and over HTTP
  (`POST /v1/completions`, a JSON response; and the same with `stream: true`, read to `[DONE]`),
  cache bypassed, so each runs the sampler: the difference is what the transport costs;
* a seeded request answered once (the miss that stores it), then the same request again and again
  over both transports: cache hits, end to end (call to final answer).

Clients keep one connection each (a gRPC channel; an HTTP keep-alive connection), as services do.

    python benchmarks/http_overhead.py                  # 500 requests per transport and kind
    python benchmarks/http_overhead.py --requests 2000 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_latency import describe, free_port, percentile, start_redis

PROMPT = "what is 12 + 30?"


def start_server(redis_url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "POWERSAMPLING_CACHE_SECRET": "http-overhead-benchmark-secret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "powersampling", "serve", "--engine", "toy", "--host", "127.0.0.1",
         "--port", str(grpc_port), "--http-port", str(http_port), "--redis-url", redis_url,
         "--log-level", "WARNING", "--max-concurrent-requests", "4"],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=1).status_code == 200:
                return process, grpc_port, http_port
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        time.sleep(0.05)
    process.kill()
    sys.exit("the server did not become ready")


def timed(call: Callable[[], str]) -> tuple[float, str]:
    start = time.perf_counter()
    text = call()
    return (time.perf_counter() - start) * 1000.0, text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests per transport and kind")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    from powersampling._proto.v1 import reasoning_pb2 as pb
    from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

    with tempfile.TemporaryDirectory() as workdir:
        redis, redis_url = start_redis(workdir)
        server, grpc_port, http_port = start_server(redis_url)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = pb_grpc.ReasoningServiceStub(channel)
            http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}/v1", timeout=60)
            knobs = {"block_size": 8, "mcmc_steps": 2}

            def request_body(seed: int, policy: str) -> dict[str, object]:
                return {
                    "prompt": PROMPT,
                    "max_tokens": args.max_new_tokens,
                    "seed": seed,
                    "cache_policy": policy,
                }

            def grpc_call(seed: int, policy: int) -> str:
                request = pb.ReasonRequest(
                    text=PROMPT,
                    chat=False,
                    max_new_tokens=args.max_new_tokens,
                    seed=seed,
                    cache_policy=policy,
                    **knobs,
                )
                return list(stub.Reason(request))[-1].final.answers[0].text

            def http_call(seed: int, policy: str) -> str:
                body = {
                    "prompt": PROMPT,
                    "max_tokens": args.max_new_tokens,
                    "seed": seed,
                    "cache_policy": policy,
                }
                response = http.post("/completions", json={**body, **knobs})
                response.raise_for_status()
                return str(response.json()["choices"][0]["text"])

            def http_stream(seed: int, policy: str) -> str:
                body = {
                    "prompt": PROMPT,
                    "max_tokens": args.max_new_tokens,
                    "seed": seed,
                    "cache_policy": policy,
                }
                text = []
                with http.stream("POST", "/completions", json={**body, **knobs, "stream": True}) as response:
                    for line in response.iter_lines():
                        if line == "data: [DONE]":
                            break
                        if line.startswith('data: {"id"') and '"text":"' in line:
                            text.append(line)
                return "".join(text)

            kinds: dict[str, Callable[[int], str]] = {
                "gRPC stream (Reason)": lambda s: grpc_call(s, pb.CACHE_POLICY_BYPASS),
                "HTTP /v1/completions": lambda s: http_call(s, "bypass"),
                "HTTP /v1/completions stream": lambda s: http_stream(s, "bypass"),
            }
            for seed in range(args.warmup):
                for call in kinds.values():
                    call(seed)
            sampled: dict[str, list[float]] = {name: [] for name in kinds}
            for i in range(args.requests):
                for name, call in kinds.items():  # alternate: each transport sees the same moment
                    sampled[name].append(timed(lambda call=call, seed=1000 + i: call(seed))[0])

            # Cache hits: one seeded request stored, then the same request again and again.
            stored_seed = 424242
            first = grpc_call(stored_seed, pb.CACHE_POLICY_USE)
            hits: dict[str, list[float]] = {"gRPC cache hit": [], "HTTP cache hit": []}
            for _ in range(args.requests):
                latency, text = timed(lambda: grpc_call(stored_seed, pb.CACHE_POLICY_USE))
                assert text == first
                hits["gRPC cache hit"].append(latency)
                latency, text = timed(lambda: http_call(stored_seed, "use"))
                assert text == first
                hits["HTTP cache hit"].append(latency)
            http.close()
            channel.close()
        finally:
            server.terminate()
            server.wait(30)
            redis.kill()
            redis.wait(10)

    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: toy demo engine, {args.max_new_tokens} new "
        f"tokens, block_size 8, 2 MCMC steps, {args.requests} sequential requests per line, "
        "transports alternating"
    )
    base = percentile(sampled["gRPC stream (Reason)"], 50)
    for name, values in sampled.items():
        print(f"  {describe(name, values)}  (p50 {percentile(values, 50) / base:.2f}x gRPC)")
    grpc_hit = percentile(hits["gRPC cache hit"], 50)
    for name, values in hits.items():
        print(f"  {describe(name, values)}  (p50 {percentile(values, 50) / grpc_hit:.2f}x gRPC hit)")


if __name__ == "__main__":
    main()
