"""Prints the figures behind the Power-SMC exactness tests (same models, seeds and sizes).

PYTHONPATH=service:client/src python -m tests.sampler.smc_figures
"""

from __future__ import annotations

import collections
import math

import numpy as np
from powersampling.engines.toy import ToyEngine, enumerate_power_distribution
from powersampling.events import SmcSweepFinished

from tests.sampler.test_exactness import chi_square_pvalue, empirical, tv_distance
from tests.sampler.test_smc_exactness import (
    ALPHA,
    PROMPT,
    T,
    eos_at_several_lengths,
    log_normaliser,
    noise_floor,
    smc,
)
from tests.sampler.toy_models import EOS, markov_engine, position_engine


def main() -> None:
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    samples = 2000
    print(f"SMC law vs particles (markov toy, S={samples}, floor {noise_floor(pi, samples):.4f}):")
    for n in (2, 8, 64):
        counts = empirical(smc(engine, samples, 3, particles=n, chunk_size=2))
        print(
            f"  N={n:3d}  TV {tv_distance(counts, pi):.4f}  chi-square p {chi_square_pvalue(counts, pi):.3g}"
        )

    samples, sweeps = 1500, 24
    kept: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)

    def record(event: object) -> None:
        if isinstance(event, SmcSweepFinished):
            kept[event.sweep_index + 1][event.state.answer_token_ids] += 1

    smc(engine, samples, 5, particles=2, sweeps=sweeps, chunk_size=2, on_event=record)
    print(f"PIMH, N=2 (markov toy, S={samples}, floor {noise_floor(pi, samples):.4f}):")
    for r in (1, 4, 12, sweeps):
        tv, p = tv_distance(kept[r], pi), chi_square_pvalue(kept[r], pi)
        print(f"  R={r:3d}  TV {tv:.4f}  chi-square p {p:.3g}")

    print("E[Ẑ]/Z over 2000 runs (mean ± standard error):")
    for make, options in [
        (markov_engine, {"particles": 4, "resample_threshold": 0.9, "chunk_size": 1}),
        (markov_engine, {"particles": 8, "chunk_size": 2, "ramp_tokens": 3}),
        (position_engine, {"particles": 4, "resample_threshold": 0.9, "chunk_size": 1}),
        (markov_engine, {"particles": 2, "proposal_temperature": 0.5}),
    ]:
        toy = make()
        results = smc(toy, 2000, 11, **options)
        ratios = np.exp(np.array([r.smc.log_z_hat for r in results]) - log_normaliser(toy, ALPHA, T))
        se = ratios.std() / math.sqrt(len(ratios))
        mean = ratios.mean()
        print(f"  {make.__name__} {options}: {mean:.4f} ± {se:.4f}  ({abs(mean - 1) / se:.2f} SE)")

    toy = ToyEngine(vocab_size=3, eos_id=EOS, next_token_logprobs=eos_at_several_lengths)
    pi6 = enumerate_power_distribution(toy, PROMPT, ALPHA, 6)
    counts = empirical(smc(toy, 1500, 2, max_new_tokens=6, particles=64, chunk_size=2))
    tv, p = tv_distance(counts, pi6), chi_square_pvalue(counts, pi6)
    floor = noise_floor(pi6, 1500)
    print(f"EOS at lengths 2, 3, 5 (T=6, N=64, S=1500, floor {floor:.4f}): TV {tv:.4f}, p {p:.3g}")


if __name__ == "__main__":
    main()
