"""Benchmark statistics: accuracy with Wilson intervals, unbiased pass@k, paired differences, cost.

Accuracy of a method is the mean over problems of the fraction of its samples that are correct
(the unbiased pass@1). Its 95% interval is Wilson's score interval with the number of *problems* as
the trial count: samples of one problem are correlated, so counting every sample as a trial would
overstate the precision; counting problems is conservative when several samples per problem are
averaged. Differences between two methods on the same problems are better judged paired:
:func:`paired_difference` bootstraps the mean per-problem difference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    value: float
    low: float
    high: float

    def fmt(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval for a binomial proportion (successes may be fractional: a mean × trials)."""
    if trials <= 0:
        raise ValueError("trials must be positive")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, low, high)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given (samples, correct) per problem; problems with fewer than k
    samples are an error (their pass@k is not estimable)."""
    if not counts:
        raise ValueError("no problems")
    return math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def accuracy(counts: Sequence[tuple[int, int]], z: float = Z_95) -> Interval:
    """Mean per-problem fraction correct, with a Wilson interval over the number of problems."""
    if not counts:
        raise ValueError("no problems")
    mean = math.fsum(c / n for n, c in counts) / len(counts)
    ci = wilson_interval(mean * len(counts), len(counts), z)
    return Interval(mean, ci.low, ci.high)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Mean of a - b over paired problems with a percentile-bootstrap interval (problems resampled)."""
    if len(a) != len(b) or not a:
        raise ValueError("need two non-empty sequences of the same length")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(math.fsum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[math.floor(tail * (resamples - 1))]
    high = means[math.ceil((1 - tail) * (resamples - 1))]
    return Interval(math.fsum(diffs) / n, low, high)


def multiplier(tokens: float, baseline_tokens: float) -> float | None:
    """How many times the baseline's tokens a method spent (None without a usable baseline)."""
    if baseline_tokens <= 0:
        return None
    return tokens / baseline_tokens


__all__ = [
    "Z_95",
    "Interval",
    "accuracy",
    "mean_pass_at_k",
    "multiplier",
    "paired_difference",
    "pass_at_k",
    "wilson_interval",
]
