"""Statistics of the bench: pass@k against enumeration, Wilson intervals, paired differences."""

from __future__ import annotations

import itertools
import math

import pytest
from powersampling.bench.metrics import (
    accuracy,
    mean_pass_at_k,
    multiplier,
    paired_difference,
    pass_at_k,
    wilson_interval,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_errors() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    assert mean_pass_at_k([(4, 1), (4, 0)], 1) == pytest.approx(0.125)


def test_wilson_interval_known_values() -> None:
    # Reference values (Wilson score interval, z = 1.96) as given by standard tables and scipy.
    iv = wilson_interval(8, 10)
    assert (iv.value, round(iv.low, 4), round(iv.high, 4)) == (0.8, 0.4902, 0.9433)
    iv = wilson_interval(0, 10)
    assert iv.low == 0.0 and round(iv.high, 4) == 0.2775
    iv = wilson_interval(10, 10)
    assert round(iv.low, 4) == 0.7225 and iv.high == 1.0
    iv = wilson_interval(67, 100)
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.5731, 0.7544)


def test_wilson_interval_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for x, n in [(1, 3), (17, 40), (49, 100), (63, 100), (99, 100)]:
        ref = stats.binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
        iv = wilson_interval(x, n)
        assert iv.low == pytest.approx(ref.low, abs=2e-4)
        assert iv.high == pytest.approx(ref.high, abs=2e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_accuracy_counts_problems_as_trials() -> None:
    acc = accuracy([(4, 4), (4, 2), (4, 0), (1, 1)])
    assert acc.value == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    ref = wilson_interval(2.5, 4)
    assert (acc.low, acc.high) == (ref.low, ref.high)


def test_paired_difference() -> None:
    a = [1.0] * 30 + [0.0] * 10
    b = [0.0] * 20 + [1.0] * 10 + [0.0] * 10
    d = paired_difference(a, b, resamples=2000)
    assert d.value == pytest.approx(0.5)
    assert 0.2 < d.low < 0.5 < d.high < 0.8
    same = paired_difference(b, b, resamples=500)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert multiplier(22.0, 10.0) == pytest.approx(2.2)
    assert multiplier(1.0, 0.0) is None
