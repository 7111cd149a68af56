"""The tokenizer side shared by the engines that run Hugging Face model folders (torch and vLLM)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
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

    @property
    def supports_tools(self) -> bool:
        return template_supports_tools(self.tokenizer)

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()
    ) -> list[int]:
        """Token ids of `messages` with the model's chat template, the assistant turn opened."""
        with self._tokenizer_lock:
            return chat_template_ids(self.tokenizer, messages, tools, model_name=self._tokenizer_model_name)


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools (Qwen2.5's, Llama 3.1's, Hermes' read `tools`)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def chat_template_ids(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]] = (),
    *,
    model_name: str,
) -> list[int]:
    """Token ids of `messages` (and `tools`) through the tokenizer's chat template, assistant turn opened.

    The caller holds the tokenizer's lock.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument("messages", f"model {model_name!r} has no chat template")
    turns: list[dict[str, Any]] = []
    for m in messages:
        turn: dict[str, Any] = {"role": str(m["role"]), "content": str(m["content"])}
        if m.get("tool_calls"):
            turn["tool_calls"] = m["tool_calls"]
        turns.append(turn)
    ids = tokenizer.apply_chat_template(
        turns,
        tools=[dict(t) for t in tools] or None,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return [int(t) for t in cast("list[int]", ids)]


__all__ = ["HuggingFaceTokenizer", "chat_template_ids", "template_supports_tools"]
