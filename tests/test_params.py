"""Bad sampling parameters get one clear error naming the field."""

from __future__ import annotations

import math

import pytest
from powersampling import InvalidArgument, SamplingParams, reason
from powersampling.engines.toy import ToyEngine


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": math.inf}, "alpha"),
        ({"alpha": -4}, "alpha"),
        ({"alpha": "4"}, "alpha"),
        ({"proposal_temperature": 0.0}, "proposal_temperature"),
        ({"proposal_temperature": -1.0}, "proposal_temperature"),
        ({"proposal_temperature": math.nan}, "proposal_temperature"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 10**9}, "block_size"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10**12}, "max_new_tokens"),
        ({"max_new_tokens": 3.5}, "max_new_tokens"),
        ({"mcmc_steps": -1}, "mcmc_steps"),
        ({"mcmc_steps": 10**7}, "mcmc_steps"),
        ({"token_budget": 10, "max_new_tokens": 100}, "token_budget"),
        ({"token_budget": 0}, "token_budget"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"n": 0}, "n"),
        ({"method": "beam"}, "method"),
        ({"stop": ("",)}, "stop"),
        ({"stop": tuple("x" * 2 for _ in range(100))}, "stop"),
    ],
)
def test_invalid_values_name_their_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert "\n" not in str(info.value)


def test_defaults_are_the_papers() -> None:
    p = SamplingParams()
    assert (p.alpha, p.temperature, p.mcmc_steps, p.max_new_tokens, p.block_size) == (
        4.0,
        0.25,
        10,
        3072,
        192,
    )
    assert SamplingParams(method="sample").temperature == 1.0
    assert SamplingParams(method="low-temp", alpha=2).temperature == 0.5
    assert SamplingParams(method="greedy").temperature == 0.0
    assert SamplingParams(block_size=500, max_new_tokens=100).effective_block_size == 100


def toy() -> ToyEngine:
    return ToyEngine(
        vocab_size=3,
        eos_id=2,
        next_token_logprobs=lambda p: [0.0, 0.0, -1.0],
        max_context_tokens=16,
        token_strings=["a", "b", ""],
    )


@pytest.mark.parametrize(
    ("prompt", "kwargs", "field"),
    [
        ("", {}, "prompt"),
        ("   ", {}, "prompt"),
        ([], {}, "prompt"),
        ([0, 7], {}, "prompt"),
        ("a" * 20, {"max_new_tokens": 1}, "prompt"),
        ("aaaa", {"max_new_tokens": 13}, "max_new_tokens"),
        ("zz", {}, "prompt"),
        ([{"role": "user", "content": "a"}], {}, "messages"),
        ([{"role": "wizard", "content": "a"}], {}, "messages[0].role"),
        ("a", {"budget": 1, "max_new_tokens": 2}, "token_budget"),
        ("a", {"colour": "red"}, "colour"),
    ],
)
def test_bad_prompts_and_options(prompt, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        reason(prompt, toy(), max_new_tokens=kwargs.pop("max_new_tokens", 4), **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"particles": 0}, "particles"),
        ({"particles": 10**6}, "particles"),
        ({"particles": 2.0}, "particles"),
        ({"sweeps": 0}, "sweeps"),
        ({"sweeps": 65}, "sweeps"),
        ({"resample_threshold": 0.0}, "resample_threshold"),
        ({"resample_threshold": 1.5}, "resample_threshold"),
        ({"resample_threshold": -0.1}, "resample_threshold"),
        ({"resample_threshold": math.nan}, "resample_threshold"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 10**9}, "chunk_size"),
        ({"ramp_tokens": -1}, "ramp_tokens"),
        ({"ramp_tokens": True}, "ramp_tokens"),
    ],
)
def test_invalid_smc_values_name_their_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        SamplingParams(method="smc", **kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("field", ["particles", "sweeps", "resample_threshold", "chunk_size", "ramp_tokens"])
@pytest.mark.parametrize("method", ["power", "sample", "low-temp", "greedy"])
def test_smc_fields_on_another_method_are_refused(field: str, method: str) -> None:
    value = 0.5 if field == "resample_threshold" else 1
    with pytest.raises(InvalidArgument) as info:
        SamplingParams(method=method, **{field: value})
    assert info.value.field == field
    assert str(info.value) == f"{field}: applies to method smc only"


def test_smc_defaults_and_effective_values() -> None:
    p = SamplingParams(method="smc")
    assert p.particles is None and p.sweeps is None
    assert (
        p.effective_particles,
        p.effective_sweeps,
        p.effective_resample_threshold,
        p.effective_chunk_size,
        p.effective_ramp_tokens,
    ) == (16, 1, 0.5, 32, 0)
    assert p.temperature == 0.25 and p.effective_mcmc_steps == 0
    q = SamplingParams(
        method="smc", particles=8, sweeps=3, resample_threshold=1.0, chunk_size=4, ramp_tokens=10
    )
    assert (
        q.effective_particles,
        q.effective_sweeps,
        q.effective_resample_threshold,
        q.effective_chunk_size,
        q.effective_ramp_tokens,
    ) == (8, 3, 1.0, 4, 10)
    assert SamplingParams(method="smc", chunk_size=500, max_new_tokens=100).effective_chunk_size == 100


def test_to_dict_keys_smc_fields_by_their_values_in_force() -> None:
    implicit = SamplingParams(method="smc").to_dict()
    explicit = SamplingParams(method="smc", particles=16, sweeps=1, chunk_size=32).to_dict()
    assert implicit == explicit
    assert implicit["particles"] == 16 and implicit["ramp_tokens"] == 0
    assert SamplingParams(method="smc", particles=8).to_dict() != implicit
    # The other methods' dicts (and so their cache keys) carry no SMC fields.
    assert "particles" not in SamplingParams().to_dict()
    assert SamplingParams(method="smc", particles=8).to_dict()["method"] == "smc"
