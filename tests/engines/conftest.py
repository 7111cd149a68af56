"""Shared engine fixtures: a tiny random Qwen2 model with a locally trained BPE tokenizer.

The builders live in `powersampling.models.tiny` (fixed seeds, no hub); the model is saved once per
session to a temporary folder.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from powersampling.models.tiny import (  # noqa: F401 - re-exported for other test modules
    TINY_CHAT_TEMPLATE,
    TINY_EOS,
    TINY_SPECIAL_TOKENS,
    build_tiny_model,
    build_tiny_tokenizer,
)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer: Any) -> Any:
    eos = tiny_tokenizer.convert_tokens_to_ids(TINY_EOS)
    pad = tiny_tokenizer.convert_tokens_to_ids("<pad>")
    # Round the vocabulary up like real models do, so logits are wider than the tokenizer's table.
    return build_tiny_model(len(tiny_tokenizer) + 8, eos, pad)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tiny_tokenizer: Any) -> Path:
    """A saved Hugging Face folder (safetensors + tokenizer) of the tiny model."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    copy.deepcopy(tiny_model).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
async def tiny_torch_engine(tiny_model_dir: Path) -> AsyncIterator[Any]:
    """A TorchEngine loaded from the tiny folder in float32 on the CPU (fresh per test)."""
    from powersampling.engines.torch_engine import TorchEngine

    engine = TorchEngine(tiny_model_dir, device="cpu", dtype="float32", max_batch_size=32)
    yield engine
    await engine.close()
