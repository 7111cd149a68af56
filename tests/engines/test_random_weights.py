"""Random-weight models of real sizes (models/random_weights.py) and the engine factory's loader for them.

Sizes are checked on PyTorch's meta device (shapes without memory); one slow test decodes with a
0.5B-shaped random model on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from powersampling.engines.base import ExtendRequest
from powersampling.engines.factory import load_random_engine
from powersampling.errors import InvalidArgument
from powersampling.models.random_weights import (
    RANDOM_ARCHITECTURES,
    build_random_model,
    random_model_fingerprint,
)

# Published parameter counts of Qwen2.5 (embeddings included), in billions.
PUBLISHED_BILLIONS = {"qwen2.5-0.5b": 0.494, "qwen2.5-1.5b": 1.544, "qwen2.5-7b": 7.616}


@pytest.mark.parametrize("architecture", sorted(RANDOM_ARCHITECTURES))
def test_shapes_have_the_published_parameter_counts(architecture: str) -> None:
    model = build_random_model(architecture, eos_token_id=0, device="meta")
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions == pytest.approx(PUBLISHED_BILLIONS[architecture], rel=0.01)
    assert next(model.parameters()).dtype.is_floating_point
    assert model.generation_config.eos_token_id == 0


def test_unknown_architecture_and_missing_tokenizer_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        load_random_engine("qwen9-huge", tiny_model_dir, device="cpu")
    assert excinfo.value.field == "architecture"
    assert "qwen2.5-7b" in str(excinfo.value)
    with pytest.raises(InvalidArgument) as excinfo:
        load_random_engine("qwen2.5-0.5b", tmp_path / "absent", device="cpu")
    assert excinfo.value.field == "tokenizer_dir"


def test_fingerprint_names_the_model_without_hashing_it() -> None:
    assert random_model_fingerprint("qwen2.5-7b", 3, "bfloat16") == "random:qwen2.5-7b:seed3:bfloat16"
    assert random_model_fingerprint("qwen2.5-7b", 3, "bfloat16") != random_model_fingerprint(
        "qwen2.5-7b", 4, "bfloat16"
    )


@pytest.mark.slow
def test_a_random_half_billion_model_decodes_on_the_cpu(tiny_model_dir: Path) -> None:
    engine = load_random_engine("qwen2.5-0.5b", tiny_model_dir, device="cpu", dtype="bfloat16")
    assert engine.info.model == "random-qwen2.5-0.5b"
    assert engine.info.fingerprint == "random:qwen2.5-0.5b:seed0:bfloat16"
    assert engine.info.extra["dtype"] == "bfloat16"
    prompt = tuple(engine.encode_prompt("Q: What is 1 + 1?\nA:", chat=False))
    (a,) = engine.extend_batch([ExtendRequest(prompt, 3, 0.25, seed=1)])
    (b,) = engine.extend_batch([ExtendRequest(prompt, 3, 0.25, seed=1)])
    assert a.token_ids == b.token_ids  # seeded
    assert len(a.token_ids) == 3
    assert all(lp <= 0.0 for lp in a.logp)
