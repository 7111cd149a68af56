"""An exact toy engine: a model given by an explicit next-token table.

Anyone can define a model whose p^alpha can be enumerated, and test a sampler against it:

    ToyEngine(vocab_size=3, eos_id=2, next_token_logprobs=lambda prefix: [log(.5), log(.3), log(.2)])

It computes in float64 (it is exact by construction), memoises the table per prefix, and draws
tokens per request from the request's seed alone.
"""

from __future__ import annotations

import functools
import hashlib
import math
import types
from collections.abc import Callable, Sequence

import numpy as np

from powersampling.engines.base import BatchingEngine, EngineInfo, ExtendRequest, Extension
from powersampling.errors import InvalidArgument

NextTokenLogprobs = Callable[[tuple[int, ...]], Sequence[float]]


def _code_digest(code: types.CodeType, h: hashlib._Hash) -> None:
    h.update(code.co_code)
    for const in code.co_consts:
        # Nested functions and comprehensions are code objects whose repr holds a memory address:
        # hash their contents instead, so the fingerprint is the same in every process.
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


def _callable_fingerprint(fn: Callable[..., object]) -> str:
    """A stable hash of a table function's name and code (pass `fingerprint=` for anything richer)."""
    code = getattr(fn, "__code__", None)
    h = hashlib.sha256(getattr(fn, "__qualname__", type(fn).__qualname__).encode())
    if code is not None:
        _code_digest(code, h)
    return h.hexdigest()


class ToyEngine(BatchingEngine):
    """A toy language model over `vocab_size` tokens with an explicit next-token table.

    `next_token_logprobs(prefix_token_ids)` returns vocab_size log-probabilities (normalised here, so
    unnormalised log-weights are fine); the prefix holds the prompt's ids and the generated ones.
    """

    def __init__(
        self,
        vocab_size: int,
        eos_id: int,
        next_token_logprobs: NextTokenLogprobs,
        *,
        max_context_tokens: int = 1 << 20,
        token_strings: Sequence[str] | None = None,
        name: str = "toy",
        fingerprint: str | None = None,
        max_batch_size: int = 1 << 16,
        cache_size: int = 1 << 18,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size)
        if vocab_size < 2:
            raise InvalidArgument("vocab_size", "a toy model needs at least 2 tokens")
        if not 0 <= eos_id < vocab_size:
            raise InvalidArgument("eos_id", f"must be a token id below vocab_size ({vocab_size})")
        strings = list(token_strings) if token_strings is not None else [f"<{i}>" for i in range(vocab_size)]
        if len(strings) != vocab_size:
            raise InvalidArgument("token_strings", f"needs {vocab_size} strings, got {len(strings)}")
        self._vocab_size = vocab_size
        self.eos_id = eos_id
        self.token_strings = strings
        self._info = EngineInfo(
            engine="toy",
            model=name,
            fingerprint=fingerprint or _callable_fingerprint(next_token_logprobs),
            max_context_tokens=max_context_tokens,
            eos_token_ids=(eos_id,),
        )
        self._table = functools.lru_cache(maxsize=cache_size)(self._normalised(next_token_logprobs))

    def _normalised(self, fn: NextTokenLogprobs) -> Callable[[tuple[int, ...]], np.ndarray]:
        def table(prefix: tuple[int, ...]) -> np.ndarray:
            row = np.asarray(fn(prefix), dtype=np.float64)
            if row.shape != (self._vocab_size,):
                raise InvalidArgument(
                    "next_token_logprobs", f"returned shape {row.shape}, expected ({self._vocab_size},)"
                )
            if np.isnan(row).any() or not np.isfinite(row.max()):
                raise InvalidArgument("next_token_logprobs", f"returned invalid log-probabilities {row}")
            return row - np.logaddexp.reduce(row)

        return table

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """log p(· | prefix) at temperature 1 (float64, normalised)."""
        return self._table(tuple(prefix))

    def proposal_logprobs(self, prefix: Sequence[int], temperature: float) -> np.ndarray:
        """log q(· | prefix) at `temperature`."""
        scaled = self.logprobs(prefix) / temperature
        return scaled - np.logaddexp.reduce(scaled)

    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        return [self._extend_one(r) for r in requests]

    def _extend_one(self, request: ExtendRequest) -> Extension:
        rng = np.random.default_rng(request.seed)
        prefix = list(request.prefix)
        tokens: list[int] = []
        logps: list[float] = []
        logqs: list[float] = []
        for _ in range(request.max_new_tokens):
            logp = self.logprobs(prefix)
            if request.temperature == 0.0:
                token, logq = int(np.argmax(logp)), 0.0
            else:
                q = self.proposal_logprobs(prefix, request.temperature)
                cdf = np.cumsum(np.exp(q))
                token = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(q) - 1)
                logq = float(q[token])
            tokens.append(token)
            logps.append(float(logp[token]))
            logqs.append(logq)
            prefix.append(token)
            if token == self.eos_id:
                return Extension(tuple(tokens), tuple(logps), tuple(logqs), True)
        return Extension(tuple(tokens), tuple(logps), tuple(logqs), False)

    def tokenize(self, text: str) -> list[int]:
        """Greedy longest match of the token strings (EOS excluded)."""
        order = sorted(
            (i for i in range(self._vocab_size) if i != self.eos_id and self.token_strings[i]),
            key=lambda i: -len(self.token_strings[i]),
        )
        ids: list[int] = []
        pos = 0
        while pos < len(text):
            for i in order:
                s = self.token_strings[i]
                if text.startswith(s, pos):
                    ids.append(i)
                    pos += len(s)
                    break
            else:
                if text[pos].isspace():
                    pos += 1
                    continue
                raise InvalidArgument("prompt", f"character {text[pos]!r} is not in the toy vocabulary")
        return ids

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join(self.token_strings[t] for t in token_ids if t != self.eos_id)


def enumerate_power_distribution(
    engine: ToyEngine, prompt_ids: Sequence[int], alpha: float, max_new_tokens: int
) -> dict[tuple[int, ...], float]:
    """The exact target pi(x) ∝ p(x | prompt)^alpha over completions of at most max_new_tokens.

    A completion is a sequence that ends in EOS, or any sequence of exactly max_new_tokens tokens.
    Exponential in max_new_tokens: for small toy models only.
    """
    log_weights: dict[tuple[int, ...], float] = {}

    def walk(seq: tuple[int, ...], logp: float) -> None:
        row = engine.logprobs(tuple(prompt_ids) + seq)
        for t in range(engine.vocab_size):
            if row[t] == -math.inf:
                continue
            nxt, lp = (*seq, t), logp + float(row[t])
            if t == engine.eos_id or len(nxt) == max_new_tokens:
                log_weights[nxt] = alpha * lp
            else:
                walk(nxt, lp)

    walk((), 0.0)
    top = max(log_weights.values())
    total = math.fsum(math.exp(w - top) for w in log_weights.values())
    return {x: math.exp(w - top) / total for x, w in log_weights.items()}


DEMO_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,?!+-=\n"


class _BigramEngine(ToyEngine):
    """A toy whose next token depends on the last token only.

    Its tables are per token, computed once, instead of memoised per prefix: the general memo keys
    on whole prefixes, which for long answers costs O(length) per token in time and holds every
    prefix seen (gigabytes after a few default-sized requests).
    """

    MAX_TEMPERATURES = 16  # proposal tables kept (one per temperature asked for)

    def __init__(self, table: np.ndarray, **kwargs: object) -> None:
        def row_of(prefix: tuple[int, ...]) -> np.ndarray:
            return table[prefix[-1] if prefix else 0]

        super().__init__(next_token_logprobs=row_of, cache_size=0, **kwargs)  # type: ignore[arg-type]
        # Normalised exactly as ToyEngine normalises one row, so answers match the general path.
        self._rows = np.stack([np.asarray(r, np.float64) - np.logaddexp.reduce(r) for r in table])
        self._proposals: dict[float, np.ndarray] = {}

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        return self._rows[prefix[-1] if prefix else 0]

    def proposal_logprobs(self, prefix: Sequence[int], temperature: float) -> np.ndarray:
        rows = self._proposals.get(temperature)
        if rows is None:
            scaled = self._rows / temperature
            rows = np.stack([r - np.logaddexp.reduce(r) for r in scaled])
            if len(self._proposals) < self.MAX_TEMPERATURES:
                self._proposals[temperature] = rows
        return rows[prefix[-1] if prefix else 0]


def demo_engine() -> ToyEngine:
    """A character-level toy for trying the CLI without a model: a fixed pseudo-random bigram table.

    Its answers are gibberish; what it shows is the sampler at work, quickly, on any machine, in
    bounded memory (a paper-sized request, 3072 tokens with 10 MCMC steps per block, takes seconds).
    """
    vocab = [*DEMO_ALPHABET, "</s>"]
    eos = len(vocab) - 1
    rng = np.random.default_rng(20251016)
    table = rng.gumbel(size=(len(vocab), len(vocab))) * 1.5
    table[:, eos] -= 2.0  # stop now and then, not at once
    return _BigramEngine(
        table,
        vocab_size=len(vocab),
        eos_id=eos,
        token_strings=vocab,
        name="toy-demo",
        fingerprint="toy-demo-20251016",
        max_context_tokens=1 << 16,
    )
