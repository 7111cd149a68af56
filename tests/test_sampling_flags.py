"""Sampling flags come from SamplingParams: every field has its flag, help and type from one place."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from powersampling.params import SMC_FIELDS, SamplingParams
from powersampling.sampling_flags import (
    SAMPLING_FIELDS,
    SMC_GROUP,
    Flag,
    add_sampling_flags,
    sampling_options,
)


def parser(**kwargs: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_sampling_flags(p, SAMPLING_FIELDS, **kwargs)  # type: ignore[arg-type]
    return p


def test_every_field_has_help_and_a_flag() -> None:
    assert tuple(f.name for f in dataclasses.fields(SamplingParams)) == SAMPLING_FIELDS
    assert all(f.metadata.get("help") for f in dataclasses.fields(SamplingParams))
    text = parser().format_help()
    for name in SAMPLING_FIELDS:
        assert "--" + name.replace("_", "-") in text
    assert SMC_GROUP in text


def test_defaults_parse_back_to_the_default_params() -> None:
    args = parser().parse_args([])
    assert SamplingParams(**sampling_options(args, SAMPLING_FIELDS)) == SamplingParams()


def test_values_types_and_respellings() -> None:
    p = parser(flags={"token_budget": Flag(names=("--budget",)), "n": Flag(names=("-n",))})
    args = p.parse_args(["--method", "smc", "--alpha", "2.5", "--budget", "9000", "-n", "3", "--stop", "a"])
    args = vars(args)
    assert (args["method"], args["alpha"], args["token_budget"], args["n"], args["stop"]) == (
        "smc",
        2.5,
        9000,
        3,
        ["a"],
    )
    assert all(args[name] is None for name in SMC_FIELDS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--particles", "0"], "must be at least 1"),
        (["--ramp-tokens", "-1"], "must be non-negative"),
        (["--proposal-temperature", "0"], "must be positive"),
    ],
)
def test_checked_flags_refuse_values_below_the_smallest(argv: list[str], message: str) -> None:
    with pytest.raises(argparse.ArgumentError, match=message):
        parser(checked=True).parse_args(argv)
    parser().parse_args(argv)  # unchecked: SamplingParams judges the value later
