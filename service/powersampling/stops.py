"""Stop strings: a chain whose generated text contains one has ended, like one that hit EOS.

A plain value on the ground floor: the sampler cuts proposals with it, and engines that stop on text
themselves (vLLM) confirm their stops with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopMatcher:
    """Finds where generated text first contains a stop string.

    Works on text, not tokens, since a stop string may span token boundaries, including the
    boundary between kept tokens and new ones.
    """

    def __init__(self, stops: Sequence[str], detokenize: Callable[[Sequence[int]], str]) -> None:
        self.stops = tuple(stops)
        self._detokenize = detokenize
        self._longest = max((len(s) for s in self.stops), default=0)

    def _find(self, text: str, start: int) -> int | None:
        hits = [i for s in self.stops if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _start(self, kept: Sequence[int]) -> int:
        """Where in the text of kept + new tokens a stop that needs a new token can begin."""
        return max(0, len(self._detokenize(kept)) - self._longest + 1)

    def contains(self, kept: Sequence[int], new: Sequence[int]) -> bool:
        """Whether a stop string shows in the text of `kept` + `new` that was not wholly in `kept`'s."""
        if not self.stops or not new:
            return False
        return self._find(self._detokenize([*kept, *new]), self._start(kept)) is not None

    def cut(self, kept: Sequence[int], new: Sequence[int]) -> int | None:
        """How many of `new` to keep so that the sequence ends with its first stop; None if no stop."""
        if not self.contains(kept, new):
            return None
        start = self._start(kept)
        kept_list = list(kept)
        for j in range(1, len(new) + 1):
            if self._find(self._detokenize(kept_list + list(new[:j])), start) is not None:
                return j
        return len(new)

    def trim_text(self, text: str) -> str:
        """The text before the first stop string (the stop itself is not part of the answer)."""
        at = self._find(text, 0)
        return text if at is None else text[:at]


__all__ = ["StopMatcher"]
