"""The stored value format: exact round trips, and nothing but InvalidValue from any bytes."""

from __future__ import annotations

import contextlib
import hashlib
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from powersampling.cache.redis_cache import (
    VALUE_VERSION,
    InvalidValue,
    decode_checkpoint,
    decode_completed,
    encode_checkpoint,
    encode_completed,
)
from powersampling.events import ChainState

from .support import result

DIGEST = hashlib.sha256(b"request").hexdigest()
OTHER = hashlib.sha256(b"another request").hexdigest()

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
float32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
counter = st.integers(0, 2**63 - 1)


@st.composite
def chain_states(draw: st.DrawFn, values: st.SearchStrategy[float] = finite) -> ChainState:
    n = draw(st.integers(0, 40))
    finish = draw(st.sampled_from([None, "eos", "stop"]))
    mcmc = draw(st.integers(0, 1000))
    accepted = draw(st.integers(0, mcmc))
    return ChainState(
        chain_index=draw(st.integers(0, 2**31 - 1)),
        seed=draw(counter),
        blocks_done=draw(st.integers(0, 10_000)),
        token_ids=tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))),
        logp=tuple(draw(st.lists(values, min_size=n, max_size=n))),
        logq=tuple(draw(st.lists(values, min_size=n, max_size=n))),
        ended=finish is not None,
        finish_reason=finish,
        tokens_spent=draw(counter),
        mcmc_steps=mcmc,
        accepted_steps=accepted,
        changed_steps=draw(st.integers(0, accepted)),
        skipped_steps=draw(counter),
    )


@settings(max_examples=200, deadline=None)
@given(chain_states())
def test_checkpoint_round_trip_is_exact(state: ChainState) -> None:
    assert decode_checkpoint(DIGEST, encode_checkpoint(DIGEST, state)) == state


@settings(max_examples=50, deadline=None)
@given(chain_states(float32))
def test_float32_values_are_stored_in_four_bytes(state: ChainState) -> None:
    value = encode_checkpoint(DIGEST, state)
    assert decode_checkpoint(DIGEST, value) == state
    # 4 bytes per token id and 4 per log-probability, plus a bounded envelope.
    assert len(value) <= 12 * len(state.token_ids) + 400


def test_float64_values_keep_every_bit() -> None:
    logp = (-math.pi, -1e-300, -0.1)
    state = ChainState(0, 1, 1, (1, 2, 3), logp, logp, False, None, 3, 0, 0, 0, 0)
    decoded = decode_checkpoint(DIGEST, encode_checkpoint(DIGEST, state))
    assert [x.hex() for x in decoded.logp] == [x.hex() for x in logp]


def test_completed_round_trip() -> None:
    results = [result(0), result(1, token_budget=1000, finish_reason="length", text="")]
    assert decode_completed(DIGEST, encode_completed(DIGEST, results)) == results


def test_value_names_its_version_type_and_request() -> None:
    state = ChainState(0, 1, 1, (1,), (-0.5,), (-0.5,), False, None, 1, 0, 0, 0, 0)
    envelope = msgpack.unpackb(encode_checkpoint(DIGEST, state))
    assert envelope["v"] == VALUE_VERSION
    assert envelope["type"] == "chain"
    assert envelope["key"] == bytes.fromhex(DIGEST)
    assert len(envelope["mac"]) == 32 and "check" not in envelope
    # A keyless checksum is no seal: a value re-sealed that way (what anyone could compute) is refused.
    envelope["check"] = hashlib.blake2b(envelope["body"], digest_size=8).digest()
    envelope["mac"] = hashlib.blake2b(envelope["body"], digest_size=32).digest()
    with pytest.raises(InvalidValue, match="MAC"):
        decode_checkpoint(DIGEST, msgpack.packb(envelope))
    with pytest.raises(InvalidValue, match="another request"):
        decode_checkpoint(OTHER, encode_checkpoint(DIGEST, state))
    with pytest.raises(InvalidValue, match="type"):
        decode_completed(DIGEST, encode_checkpoint(DIGEST, state))


@pytest.mark.parametrize(
    "state",
    [
        ChainState(0, 1, 1, (1,), (math.nan,), (-0.5,), False, None, 1, 0, 0, 0, 0),
        ChainState(0, 1, 1, (1,), (-0.5,), (-math.inf,), False, None, 1, 0, 0, 0, 0),
        ChainState(0, 1, 1, (-1,), (-0.5,), (-0.5,), False, None, 1, 0, 0, 0, 0),
        ChainState(0, 1, 1, (2**32,), (-0.5,), (-0.5,), False, None, 1, 0, 0, 0, 0),
        ChainState(0, 1, 1, (1, 2), (-0.5,), (-0.5,), False, None, 1, 0, 0, 0, 0),
    ],
    ids=["nan", "inf", "negative-id", "id-too-big", "lengths"],
)
def test_unfaithful_states_are_not_encoded(state: ChainState) -> None:
    with pytest.raises(ValueError):
        encode_checkpoint(DIGEST, state)


def test_invalid_results_are_not_encoded() -> None:
    with pytest.raises(ValueError):
        encode_completed(DIGEST, [result(log_prob=math.nan)])
    with pytest.raises(ValueError):
        encode_completed(DIGEST, [result(finish_reason="bogus")])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_value_or_invalid_value(data: bytes) -> None:
    for decode in (decode_checkpoint, decode_completed):
        with contextlib.suppress(InvalidValue):
            decode(DIGEST, data)


def test_every_truncation_and_byte_flip_is_rejected() -> None:
    state = ChainState(
        3, 7, 2, (1, 2, 3, 4), (-0.5, -1.5, -2.0, -0.1), (-0.2,) * 4, True, "eos", 9, 4, 2, 1, 0
    )
    for encoded, decode in (
        (encode_checkpoint(DIGEST, state), decode_checkpoint),
        (encode_completed(DIGEST, [result()]), decode_completed),
    ):
        for cut in range(len(encoded)):
            with pytest.raises(InvalidValue):
                decode(DIGEST, encoded[:cut])
        for i in range(len(encoded)):
            flipped = bytearray(encoded)
            flipped[i] ^= 0x40
            with pytest.raises(InvalidValue):
                decode(DIGEST, bytes(flipped))
