"""Check the torch engine on a real model and print its decoding speed.

    .venv/bin/python benchmarks/torch_engine_check.py [--model NAME_OR_PATH] [--dtype auto] [--tokens 32]

Prepares the model on first use (the default model takes about two minutes, once), answers one
few-shot sum greedily, then times extends of 1 row and of 8 rows batched (sampling at T = 0.25).
"""

from __future__ import annotations

import argparse
import time

from powersampling.engines.base import ExtendRequest
from powersampling.engines.factory import load_engine
from powersampling.models import DEFAULT_MODEL

FEW_SHOT = "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\nQ: What is 37 + 48?\nA:"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per row in the timed runs")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    t0 = time.perf_counter()
    engine = load_engine(args.model, device=args.device, dtype=args.dtype)
    info = engine.info
    print(f"loaded {info.model} in {time.perf_counter() - t0:.1f} s: {info.device}, {info.extra}")
    print(f"fingerprint {info.fingerprint}, eos {info.eos_token_ids}, context {info.max_context_tokens}")

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
