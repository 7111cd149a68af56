"""Check the torch engine on a real model and print its decoding speed.

    .venv/bin/python benchmarks/torch_engine_check.py [--model NAME_OR_PATH] [--dtype auto] [--tokens 32]
    flock /tmp/powersampling-bench.lock .venv/bin/python benchmarks/torch_engine_check.py \
        --compare-generate [--tokens 48] [--repeats 3]

Prepares the model on first use (the default model takes about two minutes, once), answers one
few-shot sum greedily, then times extends of 1 row and of 8 rows batched (sampling at T = 0.25).

--compare-generate: the one-row decode step of our engine against transformers' own `generate` on
the same loaded weights, interleaved and repeated in one process, after a ~120-token few-shot
prompt (no prefix reuse: every call prefills the whole prompt). Per step is the wall time after
the first new token divided by the tokens after it: for `generate` from a stopping criterion's
timestamps, for the engine its wall time less its prefill. Three ways: `generate`, `extend_batch`
on the calling thread, `await extend` (the worker thread the service uses).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch
from powersampling.engines.base import ExtendRequest
from powersampling.engines.factory import load_engine
from powersampling.engines.torch_engine import EngineProfile, TorchEngine
from powersampling.models import DEFAULT_MODEL

FEW_SHOT = "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\nQ: What is 37 + 48?\nA:"
# About 120 tokens: the race's few-shot arithmetic prompts are this long.
LONG_FEW_SHOT = (
    "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\nQ: What is 91 - 45?\nA: 46\n"
    "Q: What is 64 + 27?\nA: 91\nQ: What is 3 * 29?\nA: 87\nQ: What is 58 - 19?\nA: 39\n"
    "Q: What is 37 + 48?\nA:"
)


def generate_steps(engine: TorchEngine, ids: list[int], tokens: int, temperature: float) -> float:
    """Seconds per decode step of one `generate` call (after its first new token)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    prompt = torch.tensor([ids], device=engine.device)
    with torch.inference_mode():
        engine.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_p=None,
            repetition_penalty=1.0,
            eos_token_id=list(engine.info.eos_token_ids),
            pad_token_id=engine._pad_id,
            stopping_criteria=StoppingCriteriaList([Stamp()]),
        )
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def engine_steps(engine: TorchEngine, run: Any, tokens: int) -> tuple[float, int, str]:
    """Seconds per decode step of one engine call `run()` (its wall time less its prefill).

    Also says how a step splits into the forward pass and the draw (log-softmax, sampling, sync).
    """
    engine.prefix_cache.clear()
    engine.profile = prof = EngineProfile()
    started = time.perf_counter()
    (ext,) = run()
    wall = time.perf_counter() - started
    n = len(ext.token_ids)
    steps = max(1, prof.decode_steps)
    split = f"forward {prof.decode_s / steps * 1e3:.1f} + draw {prof.draw_s / (steps + 1) * 1e3:.1f} ms"
    return (wall - prof.prefill_s) / max(1, n - 1), n, split


async def compare_generate(engine: TorchEngine, tokens: int, repeats: int, temperature: float) -> None:
    ids = engine.encode_prompt(LONG_FEW_SHOT, chat=False)
    req = ExtendRequest(tuple(ids), tokens, temperature, seed=1)
    loop = asyncio.get_running_loop()

    def sync_run() -> Any:
        return engine.extend_batch([req])

    def async_run() -> Any:
        return asyncio.run_coroutine_threadsafe(engine.extend([req]), loop).result()

    print(
        f"one row, prompt {len(ids)} tokens, {tokens} new tokens, T={temperature}; "
        f"{torch.get_num_threads()} intra-op threads",
        flush=True,
    )
    # Warm-up: one of each.
    generate_steps(engine, ids, 4, temperature)
    engine_steps(engine, sync_run, 4)
    figures: dict[str, list[float]] = {"generate": [], "extend_batch": [], "await extend": []}
    for r in range(repeats):
        gen = generate_steps(engine, ids, tokens, temperature)
        ours, n1, split1 = engine_steps(engine, sync_run, tokens)
        # `await extend` from the event loop: the engine's worker thread runs the batch.
        worker, n2, split2 = await loop.run_in_executor(None, engine_steps, engine, async_run, tokens)
        figures["generate"].append(gen)
        figures["extend_batch"].append(ours)
        figures["await extend"].append(worker)
        print(
            f"  repeat {r + 1}: generate {gen * 1e3:.1f} ms/step, extend_batch {ours * 1e3:.1f} "
            f"({n1} tokens: {split1}), await extend {worker * 1e3:.1f} ({n2} tokens: {split2}); "
            "ratios generate/ours "
            f"{gen / ours:.3f} / {gen / worker:.3f}",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(
        f"median ms/step: generate {med['generate'] * 1e3:.1f}, extend_batch "
        f"{med['extend_batch'] * 1e3:.1f}, await extend {med['await extend'] * 1e3:.1f}; "
        f"speed relative to generate: extend_batch {med['generate'] / med['extend_batch']:.3f}x, "
        f"await extend {med['generate'] / med['await extend']:.3f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per row in the timed runs")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--compare-generate", action="store_true", help="time one-row decode steps against `generate`"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the --compare-generate timing")
    parser.add_argument("--temperature", type=float, default=0.25)
    args = parser.parse_args()

    t0 = time.perf_counter()
    engine = load_engine(args.model, device=args.device, dtype=args.dtype)
    info = engine.info
    print(f"loaded {info.model} in {time.perf_counter() - t0:.1f} s: {info.device}, {info.extra}")
    print(f"fingerprint {info.fingerprint}, eos {info.eos_token_ids}, context {info.max_context_tokens}")

    if args.compare_generate:
        assert isinstance(engine, TorchEngine)
        asyncio.run(compare_generate(engine, args.tokens, args.repeats, args.temperature))
        return

    ids = tuple(engine.encode_prompt(FEW_SHOT, chat=False))
    (greedy,) = engine.extend_batch([ExtendRequest(ids, 8, 0.0, seed=0, stop=("\n",))])
    print(f"greedy few-shot 37 + 48 -> {engine.detokenize(greedy.token_ids)!r}")

    chat = tuple(engine.encode_prompt("Write a Python function that reverses a string."))
    for rows in args.rows:
        reqs = [ExtendRequest(chat, args.tokens, 0.25, seed=k) for k in range(rows)]
        start = time.perf_counter()
        out = engine.extend_batch(reqs)
        elapsed = time.perf_counter() - start
        n = sum(len(e.token_ids) for e in out)
        print(
            f"{rows} row(s): {n} tokens in {elapsed:.2f} s = {n / elapsed:.1f} tok/s "
            f"(prompt {len(chat)} tokens, lengths {[len(e.token_ids) for e in out]})"
        )


if __name__ == "__main__":
    main()
