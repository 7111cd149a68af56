"""Shared engine fixtures: a tiny random Qwen2 model with a locally trained BPE tokenizer.

Everything is built here from fixed seeds (no hub, no download): a byte-level BPE trained on a few
paragraphs, a two-layer model with random weights, saved once per session to a temporary folder.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TINY_EOS = "<|im_end|>"
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Power sampling draws from p(x)^alpha with Metropolis-Hastings over blocks of tokens.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
    "def add(a, b):\n    return a + b\n\nprint(add(37, 48))  # 85",
    "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\n",
    "Engines extend batches of prefixes; every token keeps its log p and log q in float32.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
]


def build_tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on a small corpus, with eos, pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=TINY_EOS, pad_token="<pad>", unk_token=None
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, eos_id: int, pad_id: int, seed: int = 0) -> Any:
    """A two-layer Qwen2 with random weights (float32), larger init so distributions are not flat."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    model.generation_config.eos_token_id = eos_id
    return model


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
