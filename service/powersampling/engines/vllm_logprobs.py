"""Log q from vLLM's raw log p: the normaliser of p^beta from the top K, with a proven error bound.

log p and log q. vLLM returns the log-probabilities of ONE distribution per engine
(`logprobs_mode` is engine-wide). This engine runs with ``logprobs_mode="raw_logprobs"``: for every
generated token vLLM reports log p(t) = log_softmax(logits)[t] in float32 (temperature 1, before any
processing) together with the K largest log p of that step. vLLM samples t from
q = softmax(logits / tau) itself (exactly, by an exponential race over those probabilities). With
beta = 1/tau,

    log q(t) = beta * log p(t) - log Z,        Z = sum_v p_v^beta,

so log q needs one number per step, the normaliser Z. From the top K (and t) we know the partial sum
S = sum_{v in top} p_v^beta exactly and the tail mass M = 1 - sum_{v in top} p_v; every tail token has
p_v <= p_(K) (the K-th largest) and p_v <= M, hence for beta >= 1

    0 <= Z - S = sum_{tail} p_v^beta <= M * min(p_(K), M)^(beta - 1) =: U.

The engine uses log Z ~ log S + log1p(U / S) / 2 (the midpoint of [log S, log(S + U)] in log
space), so its truncation error is at most eps = log1p(U / S) / 2 — a proven bound, computed for
every token; M and p_(K) are widened by a relative slack so that float32 rounding of vLLM's values
cannot make the bound too small. Measured on the default model at tau = 1/4: with K = 256 the
bound is below 1e-6 nats for 99.3% of tokens (K = 1024: all of them, max 8e-9). Where it exceeds
`logq_tolerance` (default 1e-6, below the float32 rounding of log_softmax(logits / tau) itself), the
engine tightens Z for that step with one extra 1-token vLLM request on the same prefix (the prefix
cache serves it) that returns the top 8192 log p, and, should even that leave the bound above the
tolerance, the full distribution (``logprobs=-1``, exact). With a vocabulary of at most K tokens the
top K is everything and Z is exact. Greedy requests report log q = 0; temperature 1 gives
log q = log p. For tau > 1 (not power sampling) the tail bound is weak and most steps take the
exact path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from powersampling.errors import EngineError

# Relative slack for float32 rounding of the log-probabilities vLLM returns: |error of log p| is at
# most a few ulps of |log p| + 1, far below this.
_ROUNDING_SLACK = 2.0**-20


# --------------------------------------------------------------------------------------------------
# The normaliser of q from a top-K slice of p (pure numpy; unit-tested without vLLM)


def log_normalizer_from_topk(
    sampled_logp: np.ndarray,
    sampled_ids: np.ndarray,
    top_logp: np.ndarray,
    top_ids: np.ndarray,
    beta: float,
    vocab_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate log Z = log sum_v p_v^beta per step from the top-K log p, with a proven error bound.

    Arguments are per step (rows): the sampled token's log p and id, and the K largest log p with
    their ids (K >= 1; the sampled token may or may not be among them). Returns (log Z estimate,
    bound) as float64 arrays, with |log Z - estimate| <= bound for every row, whatever the tail holds.
    A row whose top K plus the sampled token cover the vocabulary is exact (bound 0).
    """
    if beta <= 0:
        raise ValueError("beta must be positive")
    lp_t = np.asarray(sampled_logp, dtype=np.float64)
    top = np.asarray(top_logp, dtype=np.float64)
    n, k = top.shape
    in_top = (np.asarray(top_ids) == np.asarray(sampled_ids)[:, None]).any(axis=1)
    extra = np.where(in_top, -np.inf, lp_t)[:, None]  # the sampled token, when outside the top K
    known = np.concatenate([top, extra], axis=1)
    known_beta = beta * known
    peak = known_beta.max(axis=1, keepdims=True)
    log_s = peak[:, 0] + np.log(np.exp(known_beta - peak).sum(axis=1))
    # Lower bound of the known mass (so an upper bound of the tail mass) under float32 rounding.
    slack = _ROUNDING_SLACK * (np.abs(np.where(np.isfinite(known), known, 0.0)) + 1.0)
    known_mass_low = (np.exp(known) * (1.0 - slack)).sum(axis=1)
    tail_mass = np.clip(1.0 - known_mass_low, 0.0, 1.0)
    p_k = np.exp(top.min(axis=1)) * (1.0 + _ROUNDING_SLACK * (np.abs(top.min(axis=1)) + 1.0))
    n_tail = vocab_size - k - (~in_top).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if beta >= 1.0:
            log_u = np.log(tail_mass) + (beta - 1.0) * np.log(np.minimum(p_k, tail_mass))
        else:
            # Hölder: sum over n tail terms of p^beta <= n^(1-beta) * M^beta; also <= n * p_k^beta.
            log_u = np.minimum(
                (1.0 - beta) * np.log(np.maximum(n_tail, 1)) + beta * np.log(tail_mass),
                np.log(np.maximum(n_tail, 1)) + beta * np.log(p_k),
            )
        log_u = np.where((n_tail <= 0) | (tail_mass <= 0.0), -np.inf, log_u)
        half = 0.5 * np.log1p(np.exp(log_u - log_s))
    assert half.shape == (n,)
    return log_s + half, half


@dataclass(frozen=True, slots=True)
class StepLogprobs:
    """What vLLM reported for each generated token: its log p and the top-K log p with ids."""

    sampled_logp: np.ndarray  # (n,) float32
    top_logp: np.ndarray  # (n, K) float32
    top_ids: np.ndarray  # (n, K) int64


def parse_logprobs(logprobs: Any, token_ids: Sequence[int], k: int) -> StepLogprobs:
    """Per-token log p and top-K from vLLM's output (FlatLogprobs or a list of {id: Logprob})."""
    n = len(token_ids)
    if logprobs is None or len(logprobs) != n:
        raise EngineError(
            f"vLLM returned logprobs for {0 if logprobs is None else len(logprobs)} of {n} tokens"
        )
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs: per position, the sampled token then the top K
        starts = np.asarray(logprobs.start_indices, dtype=np.int64)
        values = np.asarray(logprobs.logprobs, dtype=np.float32)
        ids = np.asarray(logprobs.token_ids, dtype=np.int64)
        sampled = values[starts]
        if k == 0:
            return StepLogprobs(sampled, np.empty((n, 0), np.float32), np.empty((n, 0), np.int64))
        cols = starts[:, None] + 1 + np.arange(k)[None, :]
        ends = np.asarray(logprobs.end_indices, dtype=np.int64)
        if not bool((ends - starts == k + 1).all()):
            raise EngineError(f"vLLM returned a logprobs row of unexpected width (expected 1 + {k})")
        return StepLogprobs(sampled, values[cols], ids[cols])
    # Older layout: one dict per position, keyed by token id, the sampled token merged in.
    sampled_l: list[float] = []
    top_l: list[list[float]] = []
    ids_l: list[list[int]] = []
    for t, pos in zip(token_ids, logprobs, strict=True):
        sampled_l.append(pos[t].logprob)
        ranked = sorted(
            ((lp.rank, tid, lp.logprob) for tid, lp in pos.items() if lp.rank <= k), key=lambda x: x[0]
        )
        if len(ranked) < k:
            raise EngineError(f"vLLM returned {len(ranked)} top log-probabilities, expected {k}")
        ids_l.append([tid for _, tid, _ in ranked[:k]])
        top_l.append([v for _, _, v in ranked[:k]])
    return StepLogprobs(
        np.asarray(sampled_l, np.float32),
        np.asarray(top_l, np.float32).reshape(n, k),
        np.asarray(ids_l, np.int64).reshape(n, k),
    )


__all__ = ["StepLogprobs", "log_normalizer_from_topk", "parse_logprobs"]
