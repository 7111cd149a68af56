"""The Redis cache's value format: msgpack envelopes sealed with a MAC, and their strict decoding.

powersampling:v2:{tenant-hash}:{<digest>}:done     string  the completed answer (all n chains)
    powersampling:v2:{tenant-hash}:{<digest>}:chains   hash    field "<i>": chain i's last checkpoint
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import msgpack
import numpy as np

from powersampling.events import ChainState, Checkpoint, SmcParticle, SmcState
from powersampling.results import ReasonResult, SmcStats

VALUE_VERSION = 2  # bump together with the "v2" of redis_keys.KEY_PREFIX on incompatible changes
CHECKPOINT_TYPE = "chain"
SMC_CHECKPOINT_TYPE = "smc"  # a Power-SMC chain's particle set and answer so far
COMPLETED_TYPE = "done"
MIN_SECRET_BYTES = 16

_MAX_INT = 2**63 - 1
MAX_CHAIN_INDEX = 2**31 - 1
_MAX_TOKEN_ID = 2**32 - 1
_MAX_STR = 1 << 16  # model, engine and method names; the answer's text is bounded by the value size
_FINISH_REASONS_OPEN = (None, "eos", "stop")
_FINISH_REASONS_DONE = ("eos", "stop", "length")
_FINISH_REASONS_PARTICLE = (None, "eos", "stop", "length")

T = TypeVar("T")


class InvalidValue(ValueError):
    """A stored value that is not a valid entry of this schema version for this key.

    `kind` says which check refused it (for logs rate-limited per kind): "format" (not msgpack, not
    a map), "version", "type", "key" (written for another request), "mac" (not sealed with this
    cache's key) or "content" (a field that fails its check).
    """

    def __init__(self, message: str, kind: str = "content") -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------

# Used when no secret is configured: values are then readable only by this process, never by another
# replica, a restarted server or whoever else writes to the Redis.
_PROCESS_MAC_KEY = secrets.token_bytes(32)


def mac_key(secret: str | bytes | None) -> bytes:
    """The 32-byte MAC key of a cache secret; None: this process's random key.

    ValueError if the secret is shorter than MIN_SECRET_BYTES (an empty secret must never mean
    "no authentication").
    """
    if secret is None:
        return _PROCESS_MAC_KEY
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"the cache secret must be at least {MIN_SECRET_BYTES} bytes, got {len(raw)}")
    return hashlib.blake2b(raw, digest_size=32, person=b"ps-cache-secret").digest()


def _mac(key: bytes, value_type: str, digest: bytes, body: bytes) -> bytes:
    """Keyed BLAKE2b of everything a reader relies on: version, type tag, request digest, body."""
    mac = hashlib.blake2b(key=key, digest_size=32, person=b"ps-cache-value")
    mac.update(f"{VALUE_VERSION}\0{value_type}\0".encode())
    mac.update(digest)
    mac.update(body)
    return mac.digest()


# ---------------------------------------------------------------------------------------------
# Value format
# ---------------------------------------------------------------------------------------------


def _pack_ids(token_ids: Sequence[int]) -> bytes:
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > _MAX_TOKEN_ID):
        raise ValueError("token ids must fit an unsigned 32-bit integer")
    return ids.astype("<u4").tobytes()


def _pack_floats(*arrays: Sequence[float]) -> tuple[str, list[bytes]]:
    """Pack float arrays as float32 when every value survives the round trip, else float64."""
    values = [np.asarray(a, dtype=np.float64) for a in arrays]
    for v in values:
        if not np.isfinite(v).all():
            raise ValueError("log-probabilities must be finite")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range is simply not lossless
        lossless = all(np.array_equal(v.astype(np.float32).astype(np.float64), v) for v in values)
    dtype = "<f4" if lossless else "<f8"
    return dtype, [v.astype(dtype).tobytes() for v in values]


def _seal(digest: str, value_type: str, body: dict[str, Any], key: bytes | None = None) -> bytes:
    """The envelope: version, type tag and request digest in clear, the body, and their MAC under
    `key` (a `mac_key`; None: this process's key)."""
    packed = msgpack.packb(body, use_bin_type=True)
    request = bytes.fromhex(digest)
    return msgpack.packb(
        {
            "v": VALUE_VERSION,
            "type": value_type,
            "key": request,
            "body": packed,
            "mac": _mac(_PROCESS_MAC_KEY if key is None else key, value_type, request, packed),
        },
        use_bin_type=True,
    )


def _open(data: bytes, value_type: str, digest: str, key: bytes | None = None) -> dict[str, Any]:
    """The body of a sealed value, after checking its envelope and MAC; InvalidValue otherwise."""
    envelope = _unpack_map(data, "value")
    if envelope.get("v") != VALUE_VERSION:
        raise InvalidValue(f"schema version {envelope.get('v')!r:.40}, expected {VALUE_VERSION}", "version")
    if envelope.get("type") != value_type:
        raise InvalidValue(f"type {envelope.get('type')!r:.40}, expected {value_type!r}", "type")
    request = bytes.fromhex(digest)
    if envelope.get("key") != request:
        raise InvalidValue("written for another request", "key")
    body, mac = envelope.get("body"), envelope.get("mac")
    if not (isinstance(body, bytes) and isinstance(mac, bytes)) or not hmac.compare_digest(
        mac, _mac(_PROCESS_MAC_KEY if key is None else key, value_type, request, body)
    ):
        raise InvalidValue("MAC mismatch: not written with this cache's secret", "mac")
    return _unpack_map(body, "body")


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many kinds on garbage
        raise InvalidValue(f"{what} is not msgpack ({type(exc).__name__})", "format") from None
    if not isinstance(value, dict):
        raise InvalidValue(f"{what} is not a map but {type(value).__name__}", "format")
    return value


def encode_checkpoint(digest: str, state: Checkpoint, *, key: bytes | None = None) -> bytes:
    """The value stored for a chain's checkpoint, sealed with `key` (a `mac_key`; None: this
    process's); ValueError if `state` cannot be stored faithfully."""
    if isinstance(state, SmcState):
        return _encode_smc_checkpoint(digest, state, key)
    if not len(state.token_ids) == len(state.logp) == len(state.logq):
        raise ValueError("token_ids, logp and logq differ in length")
    float_dtype, (logp, logq) = _pack_floats(state.logp, state.logq)
    return _seal(
        digest,
        CHECKPOINT_TYPE,
        {
            "chain_index": state.chain_index,
            "seed": state.seed,
            "blocks_done": state.blocks_done,
            "token_ids": _pack_ids(state.token_ids),
            "float_dtype": float_dtype,
            "logp": logp,
            "logq": logq,
            "finish_reason": state.finish_reason,
            "tokens_spent": state.tokens_spent,
            "mcmc_steps": state.mcmc_steps,
            "accepted_steps": state.accepted_steps,
            "changed_steps": state.changed_steps,
            "skipped_steps": state.skipped_steps,
        },
        key,
    )


def encode_completed(digest: str, results: Sequence[ReasonResult], *, key: bytes | None = None) -> bytes:
    """The value stored for a completed answer (every chain's ReasonResult, in chain order)."""
    entries = []
    for r in results:
        entry: dict[str, Any] = {name: getattr(r, name) for name in _RESULT_FIELDS}
        entry["token_ids"] = _pack_ids(r.token_ids)
        entry["smc"] = None if r.smc is None else {name: getattr(r.smc, name) for name in _SMC_STATS_FIELDS}
        for name, check in _RESULT_FIELDS.items():  # refuse to store what a reader would reject
            check(entry[name], name)
        entries.append(entry)
    return _seal(digest, COMPLETED_TYPE, {"results": entries}, key)


def _int(value: object, name: str, low: int = 0, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue(f"{name}: expected an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _opt_int(value: object, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidValue(f"{name}: expected a finite number, got {value!r:.40}")
    return float(value)


def _rate(value: object, name: str) -> float:
    rate = _float(value, name)
    if not 0.0 <= rate <= 1.0:
        raise InvalidValue(f"{name}: expected a rate in [0, 1], got {rate}")
    return rate


def _str(value: object, name: str, max_len: int = _MAX_STR) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidValue(f"{name}: expected a string of at most {max_len} characters")
    return value


def _text(value: object, name: str) -> str:
    return _str(value, name, max_len=_MAX_INT)


def _choice(*allowed: str | None) -> Callable[[object, str], Any]:
    def check(value: object, name: str) -> Any:
        if value not in allowed:
            raise InvalidValue(f"{name}: {value!r:.40} is not one of {allowed}")
        return value

    return check


def _bin(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidValue(f"{name}: expected bytes")
    return value


def _ids(value: object, name: str) -> list[int]:
    raw = _bin(value, name)
    if len(raw) % 4:
        raise InvalidValue(f"{name}: {len(raw)} bytes is not a whole number of uint32")
    return np.frombuffer(raw, dtype="<u4").tolist()  # type: ignore[no-any-return]


def _floats(value: object, name: str, dtype: str) -> tuple[float, ...]:
    raw = _bin(value, name)
    width = np.dtype(dtype).itemsize
    if len(raw) % width:
        raise InvalidValue(f"{name}: {len(raw)} bytes is not a whole number of {dtype}")
    array = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    if not np.isfinite(array).all():
        raise InvalidValue(f"{name}: holds a value that is not finite")
    return tuple(array.tolist())


_SMC_STATS_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "particles": _int,
    "sweeps": _int,
    "accepted_sweeps": _int,
    "resamples": _int,
    "ess_min": _rate,
    "unique_ancestors": _int,
    "log_z_hat": _float,
}
assert set(_SMC_STATS_FIELDS) == {f.name for f in fields(SmcStats)}, "SmcStats changed: update"


def _smc_stats(value: object, name: str) -> SmcStats | None:
    """A result's SMC statistics (a map of SmcStats' fields) or None for the other methods."""
    if value is None or isinstance(value, SmcStats):
        return value  # None, or the value being checked before it is stored
    if not isinstance(value, dict):
        raise InvalidValue(f"{name}: expected a map or nil")
    try:
        return SmcStats(**{k: check(value[k], f"{name}.{k}") for k, check in _SMC_STATS_FIELDS.items()})
    except KeyError as exc:
        raise InvalidValue(f"{name}: missing field {exc}") from None


# Every field of ReasonResult and its check; `token_ids` is packed like a checkpoint's.
_RESULT_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "text": _text,
    "token_ids": _bin,
    "finish_reason": _choice(*_FINISH_REASONS_DONE),
    "tokens_spent": _int,
    "token_budget": _opt_int,
    "mcmc_steps": _int,
    "accepted_steps": _int,
    "changed_steps": _int,
    "skipped_steps": _int,
    "acceptance_rate": _rate,
    "change_rate": _rate,
    "log_prob": _float,
    "latency_s": _float,
    "model": _str,
    "engine": _str,
    "method": _str,
    "alpha": _float,
    "proposal_temperature": _float,
    "seed": _int,
    "chain_index": lambda v, name: _int(v, name, high=MAX_CHAIN_INDEX),
    "prompt_tokens": _int,
    "resumed_from_block": _int,
    "smc": _smc_stats,
}
assert set(_RESULT_FIELDS) == {f.name for f in fields(ReasonResult)}, "ReasonResult changed: update"


def decode_checkpoint(
    digest: str, data: bytes, chain_index: int | None = None, *, key: bytes | None = None
) -> Checkpoint:
    """A checkpoint read back, validated; InvalidValue if it is not one (for `chain_index`, if given)."""
    if _value_type(data) == SMC_CHECKPOINT_TYPE:
        return _decode_smc_checkpoint(digest, data, chain_index, key)
    value = _open(data, CHECKPOINT_TYPE, digest, key)
    try:
        index = _int(value["chain_index"], "chain_index", high=MAX_CHAIN_INDEX)
        if chain_index is not None and index != chain_index:
            raise InvalidValue(f"chain_index {index} stored under chain {chain_index}")
        float_dtype = _choice("<f4", "<f8")(value["float_dtype"], "float_dtype")
        token_ids = _ids(value["token_ids"], "token_ids")
        logp = _floats(value["logp"], "logp", float_dtype)
        logq = _floats(value["logq"], "logq", float_dtype)
        if not len(token_ids) == len(logp) == len(logq):
            raise InvalidValue(f"lengths differ: {len(token_ids)} tokens, {len(logp)} logp, {len(logq)} logq")
        finish_reason = _choice(*_FINISH_REASONS_OPEN)(value["finish_reason"], "finish_reason")
        counters = {
            name: _int(value[name], name)
            for name in ("tokens_spent", "mcmc_steps", "accepted_steps", "changed_steps", "skipped_steps")
        }
        if not counters["changed_steps"] <= counters["accepted_steps"] <= counters["mcmc_steps"]:
            raise InvalidValue("step counters are inconsistent")
        return ChainState(
            chain_index=index,
            seed=_int(value["seed"], "seed"),
            blocks_done=_int(value["blocks_done"], "blocks_done"),
            token_ids=tuple(token_ids),
            logp=logp,
            logq=logq,
            ended=finish_reason is not None,
            finish_reason=finish_reason,
            **counters,
        )
    except KeyError as exc:
        raise InvalidValue(f"missing field {exc}") from None


def _value_type(data: bytes) -> object:
    """The type tag of a sealed value (None if it is not one; `_open` then says why)."""
    try:
        return _unpack_map(data, "value").get("type")
    except InvalidValue:
        return None


def _encode_smc_checkpoint(digest: str, state: SmcState, key: bytes | None) -> bytes:
    """A Power-SMC checkpoint. Resampled particles are often exact copies of each other, so each
    distinct particle is stored once and every particle names its entry, weight and ancestor."""
    distinct: dict[tuple[tuple[int, ...], tuple[float, ...], str | None], int] = {}
    entry_of = []
    for p in state.particles:
        if len(p.token_ids) != len(p.logp):
            raise ValueError("a particle's token_ids and logp differ in length")
        entry_of.append(distinct.setdefault((p.token_ids, p.logp, p.finish_reason), len(distinct)))
    if len(state.answer_token_ids) != len(state.answer_logp):
        raise ValueError("the answer's token_ids and logp differ in length")
    float_dtype, (answer_logp, *logps) = _pack_floats(state.answer_logp, *(k[1] for k in distinct))
    weights = np.asarray([p.log_weight for p in state.particles], dtype=np.float64)
    if not np.isfinite(weights).all():
        raise ValueError("log-weights must be finite")
    return _seal(
        digest,
        SMC_CHECKPOINT_TYPE,
        {
            **{name: getattr(state, name) for name in _SMC_STATE_FIELDS},
            "float_dtype": float_dtype,
            "answer_token_ids": _pack_ids(state.answer_token_ids),
            "answer_logp": answer_logp,
            "answer_finish_reason": state.answer_finish_reason,
            "answer_log_z": state.answer_log_z,
            "distinct": [
                {"token_ids": _pack_ids(ids), "logp": lp, "finish_reason": reason}
                for (ids, _, reason), lp in zip(distinct, logps, strict=True)
            ],
            "entry": _pack_ids(entry_of),
            "log_weight": weights.astype("<f8").tobytes(),
            "ancestor": _pack_ids([p.ancestor for p in state.particles]),
        },
        key,
    )


def _ess(value: object, name: str) -> float:
    ess = _rate(value, name)
    if ess <= 0.0:
        raise InvalidValue(f"{name}: expected a fraction in (0, 1], got {ess}")
    return ess


# The scalar fields of SmcState and their checks (particles and the answer are packed apart).
_SMC_STATE_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "chain_index": lambda v, name: _int(v, name, high=MAX_CHAIN_INDEX),
    "seed": _int,
    "num_particles": lambda v, name: _int(v, name, low=1, high=1 << 20),
    "sweep_index": _int,
    "chunks_done": _int,
    "sweep_log_z": _float,
    "sweep_resamples": _int,
    "sweep_ess_min": _ess,
    "tokens_spent": _int,
    "sweeps_done": _int,
    "accepted_sweeps": _int,
    "changed_sweeps": _int,
    "skipped_sweeps": _int,
    "resamples": _int,
    "ess_min": _ess,
    "unique_ancestors": _int,
    "ended": lambda v, name: _bool(v, name),
}
assert set(_SMC_STATE_FIELDS) | {
    "particles", "answer_token_ids", "answer_logp", "answer_finish_reason", "answer_log_z",
} == {f.name for f in fields(SmcState)}, "SmcState changed: update"  # fmt: skip


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{name}: expected a boolean, got {value!r:.40}")
    return value


def _decode_smc_checkpoint(digest: str, data: bytes, chain_index: int | None, key: bytes | None) -> SmcState:
    value = _open(data, SMC_CHECKPOINT_TYPE, digest, key)
    try:
        scalars = {name: check(value[name], name) for name, check in _SMC_STATE_FIELDS.items()}
        if chain_index is not None and scalars["chain_index"] != chain_index:
            raise InvalidValue(f"chain_index {scalars['chain_index']} stored under chain {chain_index}")
        if not scalars["changed_sweeps"] <= scalars["accepted_sweeps"] <= scalars["sweeps_done"]:
            raise InvalidValue("sweep counters are inconsistent")
        float_dtype = _choice("<f4", "<f8")(value["float_dtype"], "float_dtype")
        answer_ids = _ids(value["answer_token_ids"], "answer_token_ids")
        answer_logp = _floats(value["answer_logp"], "answer_logp", float_dtype)
        if len(answer_ids) != len(answer_logp):
            raise InvalidValue("the answer's token_ids and logp differ in length")
        answer_log_z = value["answer_log_z"]
        if answer_log_z is not None:
            answer_log_z = _float(answer_log_z, "answer_log_z")
        distinct_raw = value["distinct"]
        if not isinstance(distinct_raw, list):
            raise InvalidValue("distinct: expected a list")
        distinct = []
        for k, d in enumerate(distinct_raw):
            if not isinstance(d, dict):
                raise InvalidValue(f"distinct[{k}]: not a map")
            ids = _ids(d["token_ids"], f"distinct[{k}].token_ids")
            logp = _floats(d["logp"], f"distinct[{k}].logp", float_dtype)
            if len(ids) != len(logp):
                raise InvalidValue(f"distinct[{k}]: token_ids and logp differ in length")
            reason = _choice(*_FINISH_REASONS_PARTICLE)(d["finish_reason"], f"distinct[{k}].finish_reason")
            distinct.append((tuple(ids), logp, reason))
        entries = _ids(value["entry"], "entry")
        ancestors = _ids(value["ancestor"], "ancestor")
        weights = _floats(value["log_weight"], "log_weight", "<f8")
        if not len(entries) == len(ancestors) == len(weights):
            raise InvalidValue("particle arrays differ in length")
        if entries and max(entries) >= len(distinct):
            raise InvalidValue("a particle names a missing entry")
        if ancestors and max(ancestors) >= scalars["num_particles"]:
            raise InvalidValue("a particle's ancestor is out of range")
        particles = tuple(
            SmcParticle(distinct[e][0], distinct[e][1], w, distinct[e][2], a)
            for e, a, w in zip(entries, ancestors, weights, strict=True)
        )
        return SmcState(
            **scalars,
            particles=particles,
            answer_token_ids=tuple(answer_ids),
            answer_logp=answer_logp,
            answer_finish_reason=_choice(*_FINISH_REASONS_PARTICLE)(
                value["answer_finish_reason"], "answer_finish_reason"
            ),
            answer_log_z=answer_log_z,
        )
    except KeyError as exc:
        raise InvalidValue(f"missing field {exc}") from None
    except TypeError as exc:  # a map where a scalar belongs, say
        raise InvalidValue(f"malformed checkpoint ({exc})") from None


def decode_completed(digest: str, data: bytes, *, key: bytes | None = None) -> list[ReasonResult]:
    """A completed answer read back, validated; InvalidValue if it is not one."""
    value = _open(data, COMPLETED_TYPE, digest, key)
    entries = value.get("results")
    if not isinstance(entries, list) or not entries:
        raise InvalidValue("results: expected a non-empty list")
    results = []
    try:
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise InvalidValue(f"results[{i}]: not a map")
            entry.setdefault("smc", None)  # written before SMC existed: not an SMC result
            checked = {name: check(entry[name], name) for name, check in _RESULT_FIELDS.items()}
            checked["token_ids"] = _ids(checked["token_ids"], "token_ids")
            if checked["chain_index"] != i:
                raise InvalidValue(f"results[{i}] holds chain {checked['chain_index']}")
            results.append(ReasonResult(**checked))
    except KeyError as exc:
        raise InvalidValue(f"missing field {exc}") from None
    return results


def field_index(field: object) -> int:
    """The chain index a checkpoint hash field names (InvalidValue when it names none)."""
    text = field.decode("ascii", "replace") if isinstance(field, bytes) else str(field)
    if not text.isdigit() or str(int(text)) != text or int(text) > MAX_CHAIN_INDEX:
        raise InvalidValue(f"field {text!r:.40} is not a chain index")
    return int(text)


__all__ = [
    "CHECKPOINT_TYPE",
    "COMPLETED_TYPE",
    "MAX_CHAIN_INDEX",
    "MIN_SECRET_BYTES",
    "SMC_CHECKPOINT_TYPE",
    "VALUE_VERSION",
    "InvalidValue",
    "decode_checkpoint",
    "decode_completed",
    "encode_checkpoint",
    "encode_completed",
    "field_index",
    "mac_key",
]
