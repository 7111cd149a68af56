"""Telemetry overhead: throughput of one workload with telemetry off, exporting OTLP, and writing JSONL.

Each repetition runs the same concurrent batch of power-sampling requests (same seeds, so the same
tokens) once per mode, in rotating order; every request is observed the way the server observes it
(events forwarded, first event marked, finish). The OTLP receiver is a real OTLP/gRPC endpoint in a
child process (as a Collector would be); a mode's timing includes flushing its exporters, so the
export work is counted. Reports medians and the overhead against "off".

    python benchmarks/telemetry_overhead.py                      # toy engine, paper's B = 192, N = 10
    python benchmarks/telemetry_overhead.py --max-new-tokens 192 --block-size 48 --requests 8 --samples 4
    python benchmarks/telemetry_overhead.py --modes off,otlp,jsonl,otlp-nosteps,otlp-10pct
    python benchmarks/telemetry_overhead.py --model qwen2.5-coder-0.5b-instruct --repeats 3

The toy engine's tokens cost microseconds, so it shows the largest relative overhead; with a real
model each token costs far more and the same telemetry work is a smaller share. Short blocks mean
short MCMC proposals, so more step events per token: the second command is the harder case.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from powersampling.api import make_params, reason_async
from powersampling.cache.base import CacheStatus
from powersampling.engines.base import Engine
from powersampling.params import SamplingParams
from powersampling.telemetry.base import NoTelemetry, Telemetry
from powersampling.telemetry.otel import STEP_EVENTS_ENV, TRACES_FILE_ENV, OtelTelemetry, setup_telemetry

PROMPT = "what is 17 + 25? explain briefly."


# ------------------------------------------------------------------------------- OTLP receiver


def _receiver_main(port_queue: Any, stop: Any, counts: Any) -> None:
    """Child process: an OTLP/gRPC TraceService + MetricsService that counts what it receives."""
    import threading

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()
    seen = {"spans": 0, "events": 0, "metric_exports": 0}

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            with lock:
                seen["spans"] += len(spans)
                seen["events"] += sum(len(s.events) for s in spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with lock:
                seen["metric_exports"] += 1
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port_queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    stop.wait()
    server.stop(grace=1).wait()
    with lock:
        counts.put(dict(seen))


# ---------------------------------------------------------------------------------- workload


@dataclass
class Rep:
    mode: str
    wall_s: float
    cpu_s: float  # CPU time of this process, all threads (the exporters' included)
    tokens: int
    steps: int
    requests: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_s / self.tokens * 1e6


async def observed_request(
    telemetry: Telemetry, engine: Engine, params: SamplingParams, rid: str
) -> tuple[int, int]:
    """One request observed exactly as the server observes it; returns (proposal tokens, MCMC steps)."""
    prompt_ids = engine.encode_prompt(PROMPT, chat=False)
    observer = telemetry.request(
        request_id=rid,
        params=params,
        model=engine.info.model,
        engine=engine.info.engine,
        prompt_tokens=len(prompt_ids),
        tenant="bench",
    )
    observer.on_cache_status(CacheStatus.DISABLED, 0)
    first = True

    def on_event(event: Any) -> None:
        nonlocal first
        observer.on_event(event)
        if first:
            first = False
            observer.on_first_event_sent()

    try:
        results = await reason_async(prompt_ids, engine, params, on_event=on_event)
    except BaseException as error:
        observer.finish(None, error)
        raise
    observer.finish(results)
    return sum(r.tokens_spent for r in results), sum(r.mcmc_steps for r in results)


async def run_rep(mode: str, telemetry: Telemetry, engine: Engine, workload: list[SamplingParams]) -> Rep:
    started, cpu_started = time.perf_counter(), time.process_time()
    spent = await asyncio.gather(
        *(observed_request(telemetry, engine, p, f"{mode}-{i}") for i, p in enumerate(workload))
    )
    if isinstance(telemetry, OtelTelemetry):
        telemetry.force_flush()  # the export work of this repetition counts
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return Rep(mode, wall_s, cpu_s, sum(t for t, _ in spent), sum(n for _, n in spent), len(workload))


def load(model: str | None) -> Engine:
    if model is None:
        from powersampling.engines.toy import demo_engine

        return demo_engine()
    from powersampling.engines.factory import load_engine

    return load_engine(model, engine="torch")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="a model for the torch engine (default: the toy engine)"
    )
    parser.add_argument("--requests", type=int, default=4, help="concurrent requests per repetition")
    parser.add_argument("--samples", type=int, default=2, help="chains per request (n)")
    parser.add_argument("--max-new-tokens", type=int, default=768)
    parser.add_argument("--block-size", type=int, default=192, help="default: the paper's B")
    parser.add_argument("--mcmc-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--modes",
        default="off,otlp,jsonl",
        help="comma-separated: off first, then otlp, jsonl, otlp-nosteps, otlp-10pct",
    )
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    port_queue, stop, counts = ctx.Queue(), ctx.Event(), ctx.Queue()
    receiver = ctx.Process(target=_receiver_main, args=(port_queue, stop, counts), daemon=True)
    receiver.start()
    port = port_queue.get(timeout=60)

    workdir = tempfile.mkdtemp(prefix="telemetry-overhead-")
    spans_file = os.path.join(workdir, "spans.jsonl")
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    # Each mode is configured through the environment only, as a deployment would be.
    configs: dict[str, dict[str, str] | None] = {
        "off": None,
        "otlp": otlp,  # traces and metrics over OTLP/gRPC to the receiver
        "jsonl": {TRACES_FILE_ENV: spans_file},  # traces to the JSON-lines file
        "otlp-nosteps": {**otlp, STEP_EVENTS_ENV: "false"},  # no per-step span events
        "otlp-10pct": {  # one trace in ten kept; metrics complete
            **otlp,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
    }
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    if names[0] != "off" or any(m not in configs for m in names):
        parser.error(f"--modes: start with off, then any of {', '.join(configs)}")
    modes: dict[str, Telemetry] = {}
    for mode in names:
        env = configs[mode]
        if env is None:
            modes[mode] = NoTelemetry()
            continue
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        modes[mode] = setup_telemetry()
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v

    engine = load(args.model)
    workload = [
        make_params(
            max_new_tokens=args.max_new_tokens,
            block_size=args.block_size,
            mcmc_steps=args.mcmc_steps,
            n=args.samples,
            seed=1000 + i,
        )
        for i in range(args.requests)
    ]
    print(
        f"engine {engine.info.engine}/{engine.info.model}; "
        f"{args.requests} concurrent requests x n={args.samples}, "
        f"T={args.max_new_tokens}, B={args.block_size}, N={args.mcmc_steps}; {args.repeats} repetitions; "
        f"{os.cpu_count()} CPUs"
    )
    for mode, telemetry in modes.items():  # warm-up: caches, imports, connections
        await run_rep(mode, telemetry, engine, workload[:2])

    reps: dict[str, list[Rep]] = {m: [] for m in modes}
    print(f"{'rep':>3} " + " ".join(f"{m + ' tok/s':>14} {m + ' CPU us/tok':>16}" for m in names))
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
        for mode in order:
            reps[mode].append(await run_rep(mode, modes[mode], engine, workload))
        print(
            f"{rep:>3} "
            + " ".join(
                f"{reps[m][-1].tokens_per_s:>14.0f} {reps[m][-1].cpu_us_per_token:>16.2f}" for m in names
            )
        )

    tokens = {r.tokens for rs in reps.values() for r in rs}
    assert len(tokens) == 1, f"modes did different work: {tokens}"
    print()
    print(
        f"{'mode':<13} {'median tok/s':>13} {'median req/s':>13} {'throughput overhead':>20} "
        f"{'CPU us/token':>13} {'CPU overhead':>13} {'CPU us/step':>12}"
    )
    base = statistics.median(r.tokens_per_s for r in reps["off"])
    base_cpu = statistics.median(r.cpu_us_per_token for r in reps["off"])
    tokens_per_step = reps["off"][0].tokens / max(1, reps["off"][0].steps)
    for mode in names:
        median = statistics.median(r.tokens_per_s for r in reps[mode])
        cpu = statistics.median(r.cpu_us_per_token for r in reps[mode])
        print(
            f"{mode:<13} {median:>13.0f} {statistics.median(r.requests_per_s for r in reps[mode]):>13.2f} "
            f"{base / median - 1:>20.1%} {cpu:>13.2f} {cpu / base_cpu - 1:>13.1%} "
            f"{(cpu - base_cpu) * tokens_per_step:>12.1f}"
        )
    print(
        "(throughput overhead: median tokens/s off / on - 1, wall clock; CPU overhead: median CPU time per "
        "token on / off - 1, less sensitive to other load on the machine; CPU us/step: the added CPU time "
        "per MCMC step)"
    )

    for telemetry in modes.values():
        telemetry.shutdown()
    stop.set()
    received = counts.get(timeout=30)
    lines = 0
    if os.path.exists(spans_file):
        with open(spans_file, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
    receiver.join(timeout=10)
    print(
        f"\nOTLP receiver got {received['spans']} spans with {received['events']} events and "
        f"{received['metric_exports']} metric exports; {spans_file}: {lines} spans"
    )
    await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
