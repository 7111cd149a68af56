"""StopMatcher.contains: what the vLLM engine confirms its stops with, and what `cut` starts from."""

from __future__ import annotations

from collections.abc import Sequence

from powersampling.stops import StopMatcher


def detokenize(ids: Sequence[int]) -> str:
    return "".join(chr(ord("a") + i) for i in ids)  # one letter per token: 0 -> "a", 1 -> "b", ...


def test_contains_sees_only_stops_that_need_the_new_tokens() -> None:
    m = StopMatcher(["cd"], detokenize)
    assert m.contains([0, 1], [2, 3])  # "ab" + "cd"
    assert m.contains([0, 2], [3])  # "ac" + "d": the stop spans the boundary
    assert not m.contains([2, 3], [0])  # "cd" + "a": the stop was already in the kept text
    assert not m.contains([0], [1, 2])  # "a" + "bc": no stop
    assert not m.contains([0, 2], [])  # nothing new
    assert not StopMatcher([], detokenize).contains([0], [2, 3])


def test_cut_agrees_with_contains() -> None:
    m = StopMatcher(["cd", "ff"], detokenize)
    for kept, new in [([0, 2], [3, 4]), ([0], [1, 2, 3, 5, 5]), ([2, 3], [0, 1]), ([5], [5, 0])]:
        cut = m.cut(kept, new)
        assert (cut is not None) == m.contains(kept, new)
        if cut is not None:
            assert m.contains(kept, new[:cut]) and not m.contains(kept, new[: cut - 1])
