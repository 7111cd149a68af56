"""The sampler targets p^alpha exactly: enumerated kernels and sampled distributions on toy models.

Tolerances: sampled tests use fixed seeds; a chi-square test "passes" at p > 0.001 and the
total-variation noise floor for S samples over K outcomes is about sqrt(K / (2·pi·S)).
"""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
from powersampling import reason
from powersampling.engines.toy import ToyEngine, enumerate_power_distribution
from powersampling.sampler import hastings_length_term, log_acceptance_ratio
from powersampling.sampler import mh as mh_module
from scipy import stats

from tests.sampler.toy_models import EOS, markov_engine, position_engine

ALPHA = 4.0
T = 4
PROMPT = [0]


def empirical(results: list) -> collections.Counter:
    return collections.Counter(tuple(r.token_ids) for r in results)


def tv_distance(counts: collections.Counter, target: dict[tuple[int, ...], float]) -> float:
    total = sum(counts.values())
    outcomes = set(target) | set(counts)
    return 0.5 * sum(abs(counts[x] / total - target.get(x, 0.0)) for x in outcomes)


def chi_square_pvalue(counts: collections.Counter, target: dict[tuple[int, ...], float]) -> float:
    """Chi-square goodness of fit, merging outcomes with expected count < 5 into one bin."""
    total = sum(counts.values())
    assert set(counts) <= set(target), "sampled a sequence outside the target's support"
    big = [x for x in target if target[x] * total >= 5]
    small = [x for x in target if target[x] * total < 5]
    observed = [counts[x] for x in big]
    expected = [target[x] * total for x in big]
    if small:
        observed.append(sum(counts[x] for x in small))
        expected.append(sum(target[x] for x in small) * total)
    return float(stats.chisquare(observed, expected).pvalue)


# ---------------------------------------------------------------------------------------------
# The kernel, enumerated exactly: detailed balance with respect to pi, via the sampler's own
# acceptance ratio. This pins the formula (including the Hastings length term) with no noise.


def sequence_logs(engine: ToyEngine, seq: tuple[int, ...], tau: float) -> tuple[list[float], list[float]]:
    logp, logq = [], []
    for i, t in enumerate(seq):
        ctx = tuple(PROMPT) + seq[:i]
        logp.append(float(engine.logprobs(ctx)[t]))
        logq.append(float(engine.proposal_logprobs(ctx, tau)[t]))
    return logp, logq


def proposal_prob(engine: ToyEngine, prefix: tuple[int, ...], suffix: tuple[int, ...], tau: float) -> float:
    logq = 0.0
    for i, t in enumerate(suffix):
        logq += float(engine.proposal_logprobs(tuple(PROMPT) + prefix + suffix[:i], tau)[t])
    return math.exp(logq)


def exact_kernel(engine: ToyEngine, states: list[tuple[int, ...]], tau: float, with_length_term: bool):
    index = {x: i for i, x in enumerate(states)}
    kernel = np.zeros((len(states), len(states)))
    for x in states:
        lp_x, lq_x = sequence_logs(engine, x, tau)
        for m in range(len(x)):
            for y in states:
                if y[:m] != x[:m] or len(y) <= m:
                    continue
                q = proposal_prob(engine, x[:m], y[m:], tau)
                lp_y, lq_y = sequence_logs(engine, y, tau)
                log_a = log_acceptance_ratio(ALPHA, lp_x[m:], lq_x[m:], lp_y[m:], lq_y[m:])
                if with_length_term:
                    log_a += hastings_length_term(len(x), len(y))
                accept = min(1.0, math.exp(log_a))
                kernel[index[x], index[y]] += q * accept / len(x)
        kernel[index[x], index[x]] += 1.0 - kernel[index[x]].sum()
    return kernel


@pytest.mark.parametrize("make_engine", [markov_engine, position_engine])
@pytest.mark.parametrize("tau", [1 / ALPHA, 0.5, 1.0])
def test_kernel_satisfies_detailed_balance(make_engine, tau: float) -> None:
    engine = make_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    states = sorted(pi)
    kernel = exact_kernel(engine, states, tau, with_length_term=True)
    p = np.array([pi[x] for x in states])
    flow = p[:, None] * kernel
    np.testing.assert_allclose(flow, flow.T, atol=1e-12)
    np.testing.assert_allclose(p @ kernel, p, atol=1e-12)


def test_kernel_without_length_term_is_biased() -> None:
    """Drop log|x| - log|x'| and the chain's stationary distribution is no longer pi."""
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    states = sorted(pi)
    kernel = exact_kernel(engine, states, 1 / ALPHA, with_length_term=False)
    eigvals, eigvecs = np.linalg.eig(kernel.T)
    stationary = np.real(eigvecs[:, np.argmin(np.abs(eigvals - 1))])
    stationary /= stationary.sum()
    tv = 0.5 * np.abs(stationary - np.array([pi[x] for x in states])).sum()
    assert tv > 0.02, tv


def test_log_z_identity() -> None:
    """With tau = 1/alpha, log A = sum log Z(x'_{<i}) - sum log Z(x_{<i}) (to 1e-6)."""
    engine = position_engine()
    tau = 1 / ALPHA
    rng = np.random.default_rng(0)

    def log_z(ctx: tuple[int, ...]) -> float:
        return float(np.logaddexp.reduce(ALPHA * engine.logprobs(ctx)))

    checked = 0
    for _ in range(200):
        prefix = tuple(int(t) for t in rng.integers(0, 2, size=rng.integers(0, 4)))
        x = tuple(int(t) for t in rng.integers(0, 3, size=rng.integers(1, 6)))
        y = tuple(int(t) for t in rng.integers(0, 3, size=rng.integers(1, 6)))
        lp_x, lq_x = sequence_logs(engine, prefix + x, tau)
        lp_y, lq_y = sequence_logs(engine, prefix + y, tau)
        m = len(prefix)
        log_a = log_acceptance_ratio(ALPHA, lp_x[m:], lq_x[m:], lp_y[m:], lq_y[m:])
        ctx = tuple(PROMPT) + prefix
        expected = sum(log_z(ctx + y[:i]) for i in range(len(y))) - sum(
            log_z(ctx + x[:i]) for i in range(len(x))
        )
        assert log_a == pytest.approx(expected, abs=1e-6)
        checked += 1
    assert checked == 200


# ---------------------------------------------------------------------------------------------
# The whole sampler, sampled: it converges to pi with one block (B = T).


SAMPLES = 3000


def power_samples(engine: ToyEngine, steps: int, seed: int = 11, **options) -> list:
    return reason(
        PROMPT,
        engine,
        method="power",
        alpha=ALPHA,
        block_size=T,
        max_new_tokens=T,
        mcmc_steps=steps,
        n=SAMPLES,
        seed=seed,
        **options,
    )


@pytest.mark.slow
def test_single_block_converges_to_power_distribution() -> None:
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    noise_floor = math.sqrt(len(pi) / (2 * math.pi * SAMPLES))
    tvs = {steps: tv_distance(empirical(power_samples(engine, steps)), pi) for steps in (0, 4, 16, 120)}
    # Total variation shrinks as the MCMC steps grow, down to the sampling noise.
    assert tvs[0] > tvs[4] > tvs[16] > tvs[120], tvs
    assert tvs[120] < 1.5 * noise_floor, (tvs, noise_floor)
    assert chi_square_pvalue(empirical(power_samples(engine, 120, seed=5)), pi) > 1e-3


@pytest.mark.slow
def test_converges_on_second_model_with_other_proposal_temperature() -> None:
    engine = position_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    counts = empirical(power_samples(engine, 120, seed=3, proposal_temperature=0.5))
    assert chi_square_pvalue(counts, pi) > 1e-3


def test_plain_proposal_sampling_is_not_the_power_distribution() -> None:
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    plain = reason(PROMPT, engine, method="low-temp", alpha=ALPHA, max_new_tokens=T, n=SAMPLES, seed=1)
    counts = empirical(plain)
    assert tv_distance(counts, pi) > 0.3
    assert chi_square_pvalue(counts, pi) < 1e-12


@pytest.mark.slow
def test_length_term_matters_in_the_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run without the Hastings length term stays measurably away from pi."""
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    with_term = tv_distance(empirical(power_samples(engine, 120, seed=9)), pi)
    monkeypatch.setattr(mh_module, "hastings_length_term", lambda _a, _b: 0.0)
    without_term = tv_distance(empirical(power_samples(engine, 120, seed=9)), pi)
    assert without_term > with_term + 0.02, (with_term, without_term)


def test_sequences_of_different_lengths_are_compared_whole() -> None:
    """A proposal that ends with EOS early is scored over its whole suffix, and vice versa."""
    engine = markov_engine()
    tau = 1 / ALPHA
    x = (0, 0, 1, 0)  # no EOS, length T
    y = (0, EOS)  # ends early
    lp_x, lq_x = sequence_logs(engine, x, tau)
    lp_y, lq_y = sequence_logs(engine, y, tau)
    m = 1
    forward = log_acceptance_ratio(ALPHA, lp_x[m:], lq_x[m:], lp_y[m:], lq_y[m:]) + hastings_length_term(4, 2)
    backward = log_acceptance_ratio(ALPHA, lp_y[m:], lq_y[m:], lp_x[m:], lq_x[m:]) + hastings_length_term(
        2, 4
    )
    assert forward == pytest.approx(-backward, abs=1e-12)
    # And the ratio uses all three tokens of x's suffix, not just the first one as a truncating
    # implementation would.
    truncated = log_acceptance_ratio(ALPHA, lp_x[m:2], lq_x[m:2], lp_y[m:], lq_y[m:])
    assert abs(forward - truncated) > 1.0


def test_every_sample_lies_in_the_target_support() -> None:
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    for r in power_samples(engine, 3)[:500]:
        assert tuple(r.token_ids) in pi
        assert r.finish_reason == ("eos" if r.token_ids[-1] == EOS else "length")


def test_state_space_is_every_sequence_up_to_t() -> None:
    """Enumeration sanity: lengths 1..T, EOS only at the end."""
    engine = markov_engine()
    pi = enumerate_power_distribution(engine, PROMPT, ALPHA, T)
    assert math.isclose(sum(pi.values()), 1.0)
    expected = sum(2 ** (k - 1) for k in range(1, T + 1)) + 2**T
    assert len(pi) == expected
    for x in pi:
        assert all(t != EOS for t in x[:-1])
        assert len(x) == T or x[-1] == EOS
    assert set(itertools.chain.from_iterable(pi)) == {0, 1, 2}
