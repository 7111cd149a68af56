"""Small toy models whose p^alpha can be enumerated, shared by the sampler tests."""

from __future__ import annotations

import math

from powersampling.engines.toy import ToyEngine

EOS = 2


def markov_table(prefix: tuple[int, ...]) -> list[float]:
    """Next token depends on the last one; EOS is likely enough that lengths vary a lot."""
    rows = {0: [0.45, 0.25, 0.30], 1: [0.30, 0.35, 0.35], 2: [0.50, 0.30, 0.20]}
    return [math.log(v) for v in rows[prefix[-1]]]


def position_table(prefix: tuple[int, ...]) -> list[float]:
    """Next token depends on the parity of the position: a second, differently shaped model."""
    if len(prefix) % 2:
        return [math.log(0.6), math.log(0.25), math.log(0.15)]
    return [math.log(0.2), math.log(0.55), math.log(0.25)]


def markov_engine() -> ToyEngine:
    return ToyEngine(
        vocab_size=3, eos_id=EOS, next_token_logprobs=markov_table, token_strings=["a", "b", "</s>"]
    )


def position_engine() -> ToyEngine:
    return ToyEngine(vocab_size=3, eos_id=EOS, next_token_logprobs=position_table)
