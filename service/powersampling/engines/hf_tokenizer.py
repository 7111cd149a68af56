"""The tokenizer side shared by the engines that run Hugging Face model folders (torch and vLLM)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from powersampling.engines.base import ChatMessage
from powersampling.errors import InvalidArgument


class HuggingFaceTokenizer:
    """tokenize / detokenize / chat template over a transformers tokenizer; a mixin for Engine classes.

    The engine calls `_init_tokenizer(tokenizer, model_name)` once. Every call holds one lock: the
    engine's worker thread decodes (stop strings) while the event loop's thread may encode prompts,
    and a Rust tokenizer whose settings get touched from two threads at once raises "Already borrowed".
    """

    tokenizer: Any
    _tokenizer_len: int
    _tokenizer_lock: threading.Lock
    _tokenizer_model_name: str

    def _init_tokenizer(self, tokenizer: Any, model_name: str) -> None:
        self.tokenizer = tokenizer
        self._tokenizer_len = len(tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._tokenizer_model_name = model_name

    def tokenize(self, text: str) -> list[int]:
        """Token ids of raw text, with the special tokens the tokenizer adds by default (Gemma's BOS)."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped (ids past the tokenizer's table decode to nothing)."""
        ids = [int(t) for t in token_ids if 0 <= int(t) < self._tokenizer_len]
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of `messages` with the model's chat template, the assistant turn opened."""
        if not self.has_chat_template:
            raise InvalidArgument("messages", f"model {self._tokenizer_model_name!r} has no chat template")
        turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        with self._tokenizer_lock:
            ids = self.tokenizer.apply_chat_template(
                turns, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        return [int(t) for t in cast("list[int]", ids)]


__all__ = ["HuggingFaceTokenizer"]
