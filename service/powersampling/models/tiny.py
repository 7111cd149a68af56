"""A tiny random model with a locally trained tokenizer: for tests, benchmarks and trying things out.

Everything is built from fixed seeds, with no hub and no download: a byte-level BPE trained on a few
paragraphs and a two-layer Qwen2 with random weights. `powersampling reason ... --model tiny-random`
prepares one in the model cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_MODEL_NAME = "tiny-random"
TINY_BUILD_MARKER = ".tiny-build"  # holds tiny_build_id() of the prepared copy
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TINY_EOS = "<|im_end|>"
# ChatML, with tools rendered the way Qwen2.5's template does (Hermes-style <tool_call> JSON); without
# tools it renders exactly the plain ChatML turns.
TINY_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}"
    "{% if tools and loop.first and m['role'] == 'system' %}"
    "{% elif m['role'] == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{% if m['content'] %}{{ m['content'] }}\n{% endif %}"
    "{% for call in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Head size 32: a shape vLLM's CPU attention kernels take (the default build's head size 12 is not).
HEAD_DIM_32: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}

_CORPUS = [
    "Power sampling draws from p(x)^alpha with Metropolis-Hastings over blocks of tokens.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
    "def add(a, b):\n    return a + b\n\nprint(add(37, 48))  # 85",
    "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\n",
    "Engines extend batches of prefixes; every token keeps its log p and log q in float32.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
]


def tiny_build_id(**model_options: Any) -> str:
    """A hash of everything the tiny model is built from: a prepared copy with another id is stale."""
    import hashlib
    import json

    recipe = {
        "corpus": _CORPUS,
        "special": TINY_SPECIAL_TOKENS,
        "eos": TINY_EOS,
        "template": TINY_CHAT_TEMPLATE,
        "model": model_options,
        "builder": 1,  # bump when build_tiny_tokenizer / build_tiny_model change in other ways
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


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


def build_tiny_model(
    vocab_size: int,
    eos_id: int,
    pad_id: int,
    seed: int = 0,
    *,
    hidden_size: int = 48,
    intermediate_size: int = 96,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
) -> Any:
    """A two-layer Qwen2 with random weights (float32), larger init so distributions are not flat."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
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


def save_tiny_model(folder: str | Path, *, seed: int = 0, **model_options: Any) -> Path:
    """Build the tokenizer and a tiny model and save both as a Hugging Face folder (safetensors).

    The vocabulary is rounded up by 8 like real models do, so logits are wider than the tokenizer.
    """
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(TINY_EOS)
    pad = tokenizer.convert_tokens_to_ids("<pad>")
    model = build_tiny_model(len(tokenizer) + 8, eos, pad, seed, **model_options)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
