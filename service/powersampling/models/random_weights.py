"""Random-weight models of real architectures' sizes, for latency figures where no weights can be fetched.

A GPU machine with no model hub can still time decoding, MH and SMC on a model of realistic size:
the cost of a forward pass depends on the shapes, not on the values of the weights. The shapes here
are the published configurations of Qwen2.5 (the default model's family; the paper's 7B models share
the 7B shape). With random weights the next-token distribution is close to uniform over the
vocabulary, so EOS almost never comes and every answer runs to its token limit: the figures are
latencies at a fixed length, not accuracies.
"""

from __future__ import annotations

from typing import Any

# Published Qwen2.5 configurations (hidden size, layers, heads, KV heads, MLP width, vocabulary).
RANDOM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}


def random_model_fingerprint(architecture: str, seed: int, dtype: str) -> str:
    """A stable name for a random model (hashing billions of random weights would take minutes)."""
    return f"random:{architecture}:seed{seed}:{dtype}"


def build_random_model(
    architecture: str, *, eos_token_id: int, device: str = "cpu", dtype: str = "bfloat16", seed: int = 0
) -> Any:
    """A Qwen2 causal LM of `architecture`'s shape with random weights, built directly on `device`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    try:
        shape = RANDOM_ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(RANDOM_ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r}: use one of {known}") from None
    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        use_sliding_window=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = eos_token_id
    return model


__all__ = ["RANDOM_ARCHITECTURES", "build_random_model", "random_model_fingerprint"]
