"""The race: power sampling as the paper's reference procedure runs it, against our engines.

All runs share one process and one copy of the weights, one after the other:

  reference      the paper's procedure re-implemented from its description: one chain at a time,
                 one transformers `generate` call per proposal (the prompt and the kept prefix
                 re-encoded every time), top-k/top-p/repetition penalty off, EOS looked for in the
                 generated tokens only
  torch-1        our torch engine, one request at a time
  torch-all      our torch engine, all prompts in flight (up to --concurrency)
  before-1/-all  the same engine without prefix reuse and continuous batching (as it was before them),
                 for the before/after in one process
  onepass-all    our torch engine, all in flight, admitting new rows always in the running rows'
                 forward pass (padding them to the new rows' width), as it did before the
                 admission padding limit
  vllm-1/-all    the vLLM engine, where vllm is importable
  plain-1/-all   plain sampling of the same number of tokens per prompt on the torch engine
                 (`plain` runs both)

For each it prints prompts/hour, proposal tokens/s and both ratios to the reference. Absolute
figures depend on the machine and its load; quote the ratios, with the hour.

    flock /tmp/powersampling-bench.lock python benchmarks/reference_race.py            # 16 prompts
    flock /tmp/powersampling-bench.lock python benchmarks/reference_race.py --prompts 4
    python benchmarks/reference_race.py --model tiny-random --prompts 3 --max-new-tokens 16 --block-size 8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from powersampling import reason_async
from powersampling.engines.base import Engine, ExtendRequest
from powersampling.engines.factory import load_engine, load_random_engine
from powersampling.engines.torch_engine import EngineProfile, TorchEngine
from powersampling.models import DEFAULT_MODEL


@dataclass
class Run:
    label: str
    prompts: int
    tokens: int  # proposal tokens generated (every extension and every MCMC proposal)
    wall_s: float

    @property
    def prompts_per_hour(self) -> float:
        return 3600.0 * self.prompts / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def arithmetic_prompts(count: int, seed: int = 0) -> list[str]:
    """Few-shot arithmetic prompts: six worked examples, then the question (`Q: ...\\nA:`)."""
    rng = np.random.default_rng(seed)

    def qa() -> tuple[str, int]:
        a, b = (int(v) for v in rng.integers(10, 100, 2))
        op = str(rng.choice(["+", "-", "*"]))
        if op == "*":
            a = int(rng.integers(2, 10))
        return f"What is {a} {op} {b}?", {"+": a + b, "-": a - b, "*": a * b}[op]

    prompts = []
    for _ in range(count):
        shots = "".join(f"Q: {q}\nA: {v}\n" for q, v in (qa() for _ in range(6)))
        prompts.append(f"{shots}Q: {qa()[0]}\nA:")
    return prompts


# ---------------------------------------------------------------------------- the reference procedure


class ReferenceMH:
    """Block-wise MH the way the paper's reference code runs it: one `generate` call per proposal.

    Written from the method's description (DESIGN.md §1): the current sequence x is extended by a
    block, then each of N steps picks m uniformly in x, regenerates x' = x[:m] + q-tokens up to
    |x| tokens or EOS with a fresh `generate` call over the prompt and x[:m], and accepts with
    min(1, A). log p and log q come from the raw logits `generate` returns (float32).
    """

    def __init__(self, model: Any, eos_token_ids: tuple[int, ...], pad_token_id: int, alpha: float) -> None:
        self.model = model
        self.eos = set(eos_token_ids)
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.alpha = alpha
        self.temperature = 1.0 / alpha
        self.tokens_generated = 0

    def _propose(self, context: list[int], max_new_tokens: int) -> tuple[list[int], list[float], list[float]]:
        ids = torch.tensor([context], device=self.model.device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            # The model's generation_config may set these; the MH algebra needs q untouched.
            top_k=0,
            top_p=1.0,
            min_p=None,
            repetition_penalty=1.0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[0, len(context) :].tolist()
        logits = torch.stack(out.logits, dim=1)[0, : len(new)].float()
        index = torch.tensor(new, device=logits.device)[:, None]
        logp = torch.log_softmax(logits, -1).gather(1, index).squeeze(1).tolist()
        logq = torch.log_softmax(logits / self.temperature, -1).gather(1, index).squeeze(1).tolist()
        # EOS is searched for in the generated tokens only (not in prompt + output).
        for i, t in enumerate(new):
            if t in self.eos:
                new, logp, logq = new[: i + 1], logp[: i + 1], logq[: i + 1]
                break
        self.tokens_generated += len(new)
        return new, logp, logq

    def run(
        self, prompt: list[int], max_new_tokens: int, block_size: int, mcmc_steps: int, seed: int
    ) -> list[int]:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        x: list[int] = []
        lp: list[float] = []
        lq: list[float] = []
        for _ in range(math.ceil(max_new_tokens / block_size)):
            new, p, q = self._propose(prompt + x, min(block_size, max_new_tokens - len(x)))
            x, lp, lq = x + new, lp + p, lq + q
            for _ in range(mcmc_steps):
                m = int(rng.integers(0, len(x)))
                new, p, q = self._propose(prompt + x[:m], len(x) - m)
                log_a = self.alpha * (sum(p) - sum(lp[m:])) + (sum(lq[m:]) - sum(q))
                if math.log(max(rng.random(), 1e-300)) < min(0.0, log_a):
                    x, lp, lq = x[:m] + new, lp[:m] + p, lq[:m] + q
            if x and x[-1] in self.eos:
                break
        return x


# ---------------------------------------------------------------------------- our engines


async def race_engine(
    engine: Engine, label: str, prompts: list[str], concurrency: int, options: dict[str, Any]
) -> tuple[Run, list[int]]:
    """Power sampling of every prompt with at most `concurrency` requests in flight."""
    gate = asyncio.Semaphore(concurrency)
    spent: list[int] = [0] * len(prompts)

    async def one(k: int) -> None:
        async with gate:
            (result,) = await reason_async(prompts[k], engine, chat=False, seed=1000 + k, **options)
            spent[k] = result.tokens_spent

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(len(prompts))))
    return Run(label, len(prompts), sum(spent), time.perf_counter() - started), spent


async def race_plain(
    engine: Engine,
    label: str,
    prompt_ids: list[list[int]],
    tokens: list[int],
    concurrency: int,
    temperature: float,
) -> Run:
    """Plain sampling: one request of `tokens[k]` new tokens per prompt, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    made: list[int] = [0] * len(prompt_ids)

    async def one(k: int) -> None:
        async with gate:
            req = ExtendRequest(tuple(prompt_ids[k]), tokens[k], temperature, seed=k)
            (ext,) = await engine.extend([req])
            made[k] = len(ext.token_ids)

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(len(prompt_ids))))
    return Run(label, len(prompt_ids), sum(made), time.perf_counter() - started)


async def profile_one(engine: TorchEngine, label: str, prompt: str, options: dict[str, Any]) -> None:
    """Where one MH request's wall time goes: prefill, decode, sampling, cache copies, the rest."""
    engine.profile = EngineProfile()
    busy0 = engine.busy_s
    started = time.perf_counter()
    (result,) = await reason_async(prompt, engine, chat=False, seed=7, **options)
    wall = time.perf_counter() - started
    prof, busy = engine.profile, engine.busy_s - busy0
    engine_other = busy - prof.prefill_s - prof.decode_s - prof.draw_s - prof.cache_s
    parts = [
        ("prefill", prof.prefill_s, f"{prof.prefill_passes} passes, {prof.prefill_tokens} tokens"),
        ("decode", prof.decode_s, f"{prof.decode_steps} steps, {prof.mean_decode_rows:.1f} rows/step"),
        ("draw (softmax, sampling, sync)", prof.draw_s, ""),
        ("prefix cache copies", prof.cache_s, ""),
        ("engine Python (batching, stops)", engine_other, ""),
        ("sampler + asyncio", wall - busy, ""),
    ]
    print(f"\nprofile {label}: one MH request, {result.tokens_spent} proposal tokens, {wall:.1f} s wall")
    for name, secs, note in parts:
        print(f"  {name:<32} {secs:>7.2f} s {secs / wall:>6.1%}  {note}", flush=True)


def print_table(runs: list[Run], reference: Run | None) -> None:
    header = ("run", "prompts", "tokens", "wall s", "prompts/h", "tok/s", "×ref p/h", "×ref tok/s")
    print("\n{:<26} {:>7} {:>7} {:>8} {:>10} {:>7} {:>9} {:>10}".format(*header))
    for r in runs:
        ratio_p = f"{r.prompts_per_hour / reference.prompts_per_hour:.2f}" if reference else "-"
        ratio_t = f"{r.tokens_per_s / reference.tokens_per_s:.2f}" if reference else "-"
        print(
            f"{r.label:<26} {r.prompts:>7} {r.tokens:>7} {r.wall_s:>8.1f} {r.prompts_per_hour:>10.1f} "
            f"{r.tokens_per_s:>7.2f} {ratio_p:>9} {ratio_t:>10}",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--random-weights",
        metavar="ARCH",
        help="race on a random-weight model of this shape (qwen2.5-7b, ...)",
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer folder for --random-weights (default: the default model's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", type=int, default=16, help="number of few-shot arithmetic prompts")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight for the -all runs")
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--mcmc-steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--runs",
        default="reference,torch-1,torch-all,before-1,before-all,vllm,plain",
        help="comma-separated subset of: reference, torch-1, torch-all, onepass-all, before-1, "
        "before-all, vllm, plain (= plain-1,plain-all), plain-1, plain-all",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--profile", action="store_true", help="first profile one MH request with and without prefix reuse"
    )
    args = parser.parse_args()
    wanted = set(args.runs.split(","))
    if "plain" in wanted:
        wanted |= {"plain-1", "plain-all"}

    if args.random_weights:
        engine = load_random_engine(args.random_weights, args.tokenizer, device=args.device, dtype=args.dtype)
    else:
        engine = load_engine(args.model, engine="torch", device=args.device, dtype=args.dtype)
    assert isinstance(engine, TorchEngine)
    # The same weights without prefix reuse and with batch-at-a-time dispatch: the engine as it was.
    noreuse = TorchEngine.from_pretrained_objects(
        engine.model,
        engine.tokenizer,
        name=engine.info.model,
        fingerprint=engine.info.fingerprint,
        prefix_cache_tokens=0,
        continuous_batching=False,
    )
    prompts = arithmetic_prompts(args.prompts)
    prompt_ids = [engine.encode_prompt(p, chat=False) for p in prompts]
    concurrency = min(args.concurrency, len(prompts))
    options = dict(
        method="power",
        alpha=args.alpha,
        mcmc_steps=args.mcmc_steps,
        max_new_tokens=args.max_new_tokens,
        block_size=args.block_size,
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{stamp}: model {engine.info.model} ({engine.info.extra['dtype']}, {engine.info.device}, "
        f"{torch.get_num_threads()} threads); {len(prompts)} prompts of {min(map(len, prompt_ids))}-"
        f"{max(map(len, prompt_ids))} tokens; alpha={args.alpha}, N={args.mcmc_steps}, "
        f"T={args.max_new_tokens}, B={args.block_size}; in flight: {concurrency}",
        flush=True,
    )
    await reason_async(
        prompts[0], engine, chat=False, seed=0, **{**options, "max_new_tokens": 4, "block_size": 4}
    )
    engine.prefix_cache.clear()

    if args.profile:
        for label, eng in (
            ("with prefix reuse and continuous batching", engine),
            ("before: neither", noreuse),
        ):
            await profile_one(eng, label, prompts[0], options)
        engine.prefix_cache.clear()

    runs: list[Run] = []
    reference: Run | None = None
    if "reference" in wanted:
        ref = ReferenceMH(engine.model, engine.info.eos_token_ids, engine._pad_id, args.alpha)
        started = time.perf_counter()
        with torch.inference_mode():
            for k, ids in enumerate(prompt_ids):
                ref.run(ids, args.max_new_tokens, args.block_size, args.mcmc_steps, seed=1000 + k)
        reference = Run(
            "reference (generate)", len(prompts), ref.tokens_generated, time.perf_counter() - started
        )
        runs.append(reference)
        print_table([reference], reference)

    spent: list[int] | None = None
    for label, eng, conc in (
        ("torch-1", engine, 1),
        ("before-1", noreuse, 1),
        ("torch-all", engine, concurrency),
        ("onepass-all", engine, concurrency),
        ("before-all", noreuse, concurrency),
    ):
        if label not in wanted:
            continue
        limit = engine.admission_padding_limit
        if label == "onepass-all":
            engine.admission_padding_limit = 1 << 62
        if eng is engine:
            engine.prefix_cache.clear()  # no head start from an earlier run's prompts
        hits0, miss0 = engine.prefix_cache.hit_tokens, engine.prefix_cache.miss_tokens
        run, spent_now = await race_engine(eng, f"{label} ({conc} in flight)", prompts, conc, options)
        spent = spent or spent_now
        runs.append(run)
        if eng is engine:
            hits, misses = engine.prefix_cache.hit_tokens - hits0, engine.prefix_cache.miss_tokens - miss0
            print(f"  prefix cache: {hits} prompt/prefix tokens reused, {misses} computed", flush=True)
        engine.admission_padding_limit = limit
        print_table([run], reference)

    if "vllm" in wanted:
        try:
            import vllm  # noqa: F401
        except ImportError:
            print("vllm: not importable in this environment; skipped", flush=True)
        else:
            vllm_engine = load_engine(args.model, engine="vllm", device=args.device)
            await vllm_engine.start()
            try:
                for conc in (1, concurrency):
                    run, _ = await race_engine(
                        vllm_engine, f"vllm ({conc} in flight)", prompts, conc, options
                    )
                    runs.append(run)
                    print_table([run], reference)
            finally:
                await vllm_engine.close()

    if "plain-1" in wanted or "plain-all" in wanted:
        # Plain sampling of as many tokens per prompt as power sampling spent (or the budget's worth).
        tokens = spent or [args.max_new_tokens * (1 + args.mcmc_steps)] * len(prompts)
        for conc in (1, concurrency):
            if f"plain-{'1' if conc == 1 else 'all'}" not in wanted:
                continue
            run = await race_plain(
                engine, f"plain ({conc} in flight)", prompt_ids, tokens, conc, 1.0 / args.alpha
            )
            runs.append(run)
            print_table([run], reference)

    print_table(runs, reference)
    stats = engine.prefix_cache.stats()
    print(f"prefix cache at the end: {stats}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "when": stamp,
                    "args": vars(args),
                    "runs": [
                        asdict(r) | {"prompts_per_hour": r.prompts_per_hour, "tokens_per_s": r.tokens_per_s}
                        for r in runs
                    ],
                },
                f,
                indent=2,
            )
    await engine.close()
    await noreuse.close()


if __name__ == "__main__":
    asyncio.run(main())
