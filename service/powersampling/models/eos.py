"""Which token ids end a completion: one rule for every reader of a Hugging Face model folder."""

from __future__ import annotations

from typing import Any


def collect_eos_ids(
    *sources: Any, vocab_size: int | None = None, tokenizer: Any = None, extra_tokens: tuple[str, ...] = ()
) -> list[int]:
    """Every end-of-sequence id declared by `sources`, in order, without repeats.

    Each source is an object with an `eos_token_id` (a generation config, a model config, a
    tokenizer) or None; the attribute may hold one id or a list. `extra_tokens` are token strings
    looked up in `tokenizer`'s vocabulary (instruct models end turns with a token that GGUF metadata
    does not always mark as eos). Ids outside 0..vocab_size-1 are dropped when vocab_size is given.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list | tuple) else [value]:
            if (
                isinstance(v, int)
                and not isinstance(v, bool)
                and v >= 0
                and (vocab_size is None or v < vocab_size)
                and v not in ids
            ):
                ids.append(v)

    for source in sources:
        if source is not None:
            add(getattr(source, "eos_token_id", None))
    if extra_tokens and tokenizer is not None:
        vocab = tokenizer.get_vocab()
        for token in extra_tokens:
            add(vocab.get(token))
    return ids


__all__ = ["collect_eos_ids"]
