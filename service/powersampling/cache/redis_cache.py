"""`RedisChainCache`: completed answers and per-block checkpoints in Redis (standalone or Cluster).

Key layout (one request = one hash tag, so a request's keys share a Cluster slot):

    powersampling:v2:{tenant-hash}:{<digest>}:done     string  the completed answer (all n chains)
    powersampling:v2:{tenant-hash}:{<digest>}:chains   hash    field "<i>": chain i's last checkpoint

`tenant-hash` is the first 16 hex digits of a sha256 of the tenant name, so no tenant name (":", "*",
"{", ...) can escape its namespace; the tenant also enters the request digest, so one tenant can never
read another's entries. Only the last finished block of each chain is kept (each write overwrites
the chain's field); writing the completed answer deletes the checkpoints in the same transaction.

Values are msgpack: an envelope map {"v": schema version, "type": "chain" | "done", "key": the
request digest (32 bytes), "body": msgpack bytes, "mac": 32-byte keyed BLAKE2b of version, type,
digest and body}, whose body is a map of the fields (see `encode_checkpoint`, `encode_completed`).
The MAC key comes from the cache secret (`mac_key`); without one, from a random key of this process,
so that nothing another program wrote to Redis is ever used. Token ids and log-probabilities
travel as packed little-endian arrays, float32 when that is lossless and float64 otherwise, so a
resumed chain sees bit-identical numbers. Every value read is validated (envelope, MAC, types,
ranges, consistent lengths, finite floats); one that fails (garbage, another version, truncated,
inconsistent, written for another key or with another secret, another Redis type, larger than
`max_value_bytes`) is logged, deleted and treated as absent. Reads are bounded: a value's size is
checked before it is read, so a huge value is deleted, never transferred. Nothing is ever unpickled.

Failure behaviour: every Redis call has short socket timeouts and a hard deadline, no retries, and a
circuit breaker: after a connection failure or timeout Redis is skipped for a cool-down (doubling up
to `max_cooldown_s` while it stays down), then one call tries it again. While skipped or failing, reads
return "absent" and writes are dropped, so requests run without the cache and caching resumes by itself
once Redis answers again (logged). Repeated errors are logged at most once per `log_interval_s` per
kind (each kind of invalid value, oversize values, unavailability, each failing command).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

import msgpack
import numpy as np
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from powersampling.cache.base import CacheKey
from powersampling.events import ChainState, Checkpoint, SmcParticle, SmcState
from powersampling.results import ReasonResult, SmcStats

logger = logging.getLogger(__name__)

KEY_PREFIX = "powersampling:v2"  # bump the "v2" together with VALUE_VERSION on incompatible changes
VALUE_VERSION = 2
CHECKPOINT_TYPE = "chain"
SMC_CHECKPOINT_TYPE = "smc"  # a Power-SMC chain's particle set and answer so far
COMPLETED_TYPE = "done"

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_PARTIAL_TTL_S = 3600.0
DEFAULT_MAX_VALUE_BYTES = 4 << 20
DEFAULT_TIMEOUT_S = 0.25  # generous enough for a loaded host; a healthy Redis answers in ~1 ms
MAX_CHECKPOINT_FIELDS = 1024  # a request's checkpoint hash holds one field per chain (n <= 1024)
MIN_SECRET_BYTES = 16

_MAX_INT = 2**63 - 1
_MAX_CHAIN_INDEX = 2**31 - 1
_MAX_TOKEN_ID = 2**32 - 1
_MAX_STR = 1 << 16  # model, engine and method names; the answer's text is bounded by the value size
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FINISH_REASONS_OPEN = (None, "eos", "stop")
_FINISH_REASONS_DONE = ("eos", "stop", "length")
_FINISH_REASONS_PARTICLE = (None, "eos", "stop", "length")

RedisClient = Redis | RedisCluster
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
    "chain_index": lambda v, name: _int(v, name, high=_MAX_CHAIN_INDEX),
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
        index = _int(value["chain_index"], "chain_index", high=_MAX_CHAIN_INDEX)
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
    "chain_index": lambda v, name: _int(v, name, high=_MAX_CHAIN_INDEX),
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


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def tenant_hash(tenant: str) -> str:
    """16 hex digits naming a tenant's key namespace (any tenant name, no escaping needed)."""
    name = tenant.encode("utf-8", "surrogatepass")
    return hashlib.sha256(b"powersampling-tenant\0" + name).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis keys of one request."""

    done: str
    chains: str

    @classmethod
    def of(cls, key: CacheKey) -> RedisKeys:
        if not _DIGEST.fullmatch(key.digest):
            raise ValueError(f"a cache key digest is 64 lowercase hex digits, got {key.digest!r:.80}")
        base = f"{KEY_PREFIX}:{tenant_hash(key.tenant)}:{{{key.digest}}}"
        return cls(done=f"{base}:done", chains=f"{base}:chains")


# ---------------------------------------------------------------------------------------------
# Failure handling
# ---------------------------------------------------------------------------------------------


class CircuitBreaker:
    """Skips Redis for a cool-down after a failure, then lets one trial call through.

    The cool-down doubles with each failed trial (up to `max_cooldown_s`) and resets on success.
    Failures reported while the breaker is already open (calls that were in flight when Redis went
    away) do not lengthen it.
    """

    def __init__(
        self, cooldown_s: float, max_cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self._open_until: float | None = None
        self._down_since: float | None = None
        self._trips = 0
        self._trial_in_flight = False

    @property
    def closed(self) -> bool:
        """Whether calls go through normally (no recent failure)."""
        return self._open_until is None

    def ready(self) -> bool:
        """Whether `allow` would let a call through now (without claiming the trial)."""
        return self._open_until is None or (not self._trial_in_flight and self._clock() >= self._open_until)

    @property
    def open_for_s(self) -> float:
        """Seconds left before the next trial (0 when closed or due)."""
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a call may go to Redis now (when open, at most one trial after the cool-down)."""
        if self._open_until is None:
            return True
        if self._trial_in_flight or self._clock() < self._open_until:
            return False
        self._trial_in_flight = True
        return True

    def abandon(self) -> None:
        """A call let through ended without telling anything about Redis (it was cancelled)."""
        self._trial_in_flight = False

    def success(self) -> float | None:
        """Record a call that Redis answered; returns how long it was down if this closes the
        breaker (seconds since the first failure), else None."""
        down_for = None if self._down_since is None else self._clock() - self._down_since
        self._open_until = None
        self._down_since = None
        self._trips = 0
        self._trial_in_flight = False
        return down_for

    def failure(self) -> None:
        now = self._clock()
        if self._open_until is not None and not self._trial_in_flight and now < self._open_until:
            return
        cooldown = min(self.max_cooldown_s, self.cooldown_s * 2.0 ** min(self._trips, 30))
        if self._down_since is None:
            self._down_since = now
        self._trips += 1
        self._open_until = now + cooldown
        self._trial_in_flight = False


class RateLimitedLog:
    """Logs a message of each kind at most once per `interval_s`, counting the ones left out."""

    def __init__(self, log: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.INFO, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last, suppressed = self._last.get(kind, (-math.inf, 0))
        if now - last < self._interval_s:
            self._last[kind] = (last, suppressed + 1)
            return
        self._last[kind] = (now, 0)
        if suppressed:
            message += " (%d similar message(s) not logged)"
            args = (*args, suppressed)
        self._log.log(level, message, *args)


def redact_url(url: str) -> str:
    """`url` with its password replaced by '***' (for logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# Errors that mean "Redis is not answering": they open the circuit breaker. Other RedisErrors (a
# ResponseError such as OOM or WRONGTYPE) concern one command and are logged only.
_UNAVAILABLE = (OSError, TimeoutError, ClusterError, RedisClusterException)


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, RedisError) and not isinstance(exc, ResponseError)
    )


class _Failed:
    """Marks a call that did not reach Redis or failed there."""


_FAILED = _Failed()


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisCacheSettings:
    """Bounds and timeouts of a RedisChainCache."""

    ttl_s: float = DEFAULT_TTL_S  # completed answers
    partial_ttl_s: float = DEFAULT_PARTIAL_TTL_S  # per-chain checkpoints, refreshed on every write
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES  # larger values are not stored
    timeout_s: float = DEFAULT_TIMEOUT_S  # socket read timeout (and connect timeout, unless given)
    connect_timeout_s: float | None = None  # None: timeout_s
    cooldown_s: float = 1.0  # Redis is skipped this long after a failure (doubling while down)
    max_cooldown_s: float = 30.0
    log_interval_s: float = 30.0  # the same kind of warning is logged at most once per interval
    # Key material of the values' MAC (see `mac_key`); None: a random key of this process, so values
    # are reused only by this process. Replicas that share a Redis need the same secret.
    secret: str | bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.connect_timeout_s is None:
            object.__setattr__(self, "connect_timeout_s", self.timeout_s)
        mac_key(self.secret)  # refuse a short secret now
        for name in (
            "ttl_s",
            "partial_ttl_s",
            "timeout_s",
            "connect_timeout_s",
            "cooldown_s",
            "max_cooldown_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.max_value_bytes, int) or self.max_value_bytes < 1024:
            raise ValueError(f"max_value_bytes must be an integer >= 1024, got {self.max_value_bytes!r}")

    @property
    def deadline_s(self) -> float:
        """Hard bound on one cache call: a connect, then a write and a read within timeout_s each."""
        assert self.connect_timeout_s is not None
        return self.connect_timeout_s + 2 * self.timeout_s

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    @property
    def partial_ttl_ms(self) -> int:
        return max(1, round(self.partial_ttl_s * 1000))


class RedisChainCache:
    """ChainCache on Redis (`redis.asyncio`); never raises to the caller, never blocks the loop.

    Build it with `from_url` (or `from_client` around an existing client). The client is created
    lazily on first use, in the running event loop, and is bound to that loop.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[RedisClient]],
        settings: RedisCacheSettings | None = None,
        *,
        name: str = "redis",
    ) -> None:
        self.settings = settings or RedisCacheSettings()
        self.name = name
        self._connect = connect
        self._client: RedisClient | None = None
        self._connecting: asyncio.Lock | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.breaker = CircuitBreaker(self.settings.cooldown_s, self.settings.max_cooldown_s)
        self._log = RateLimitedLog(logger, self.settings.log_interval_s)
        self._mac_key = mac_key(self.settings.secret)
        if self.settings.secret is None:
            _warn_no_secret_once()

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        partial_ttl_s: float = DEFAULT_PARTIAL_TTL_S,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        cluster: bool | None = None,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 30.0,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_check_hostname: bool | None = None,
        max_connections: int | None = None,
        secret: str | bytes | None = None,
    ) -> RedisChainCache:
        """A cache on the Redis at `url` (`redis://[user:password@]host:port/db` or `rediss://` for TLS).

        `cluster`: True for Redis Cluster, False for a single server (or a proxy), None to ask the
        server on first use (`INFO cluster`). The ssl_* options apply to `rediss://` URLs: a CA bundle
        to verify the server, and a client certificate and key for mutual TLS. `connect_timeout_s`
        defaults to `timeout_s`, or to 5 × `timeout_s` for TLS, whose handshake takes extra round
        trips and client-side set-up (redis-py loads the CA store for every new connection, ~0.1 s).
        `secret` authenticates the values (at least MIN_SECRET_BYTES; the same on every replica that
        shares the Redis); None: a random key of this process, so only this process reuses them.
        Nothing connects here.
        """
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://: {redact_url(url)!r}")
        if connect_timeout_s is None:
            connect_timeout_s = 5 * timeout_s if scheme == "rediss" else timeout_s
        settings = RedisCacheSettings(
            ttl_s=ttl_s,
            partial_ttl_s=partial_ttl_s,
            max_value_bytes=max_value_bytes,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            cooldown_s=cooldown_s,
            max_cooldown_s=max_cooldown_s,
            secret=secret,
        )
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),  # the circuit breaker decides when to try again
            "health_check_interval": 0,
        }
        if scheme == "rediss":
            for option, value in (
                ("ssl_ca_certs", ssl_ca_certs),
                ("ssl_certfile", ssl_certfile),
                ("ssl_keyfile", ssl_keyfile),
                ("ssl_check_hostname", ssl_check_hostname),
            ):
                if value is not None:
                    options[option] = value
        elif any(v is not None for v in (ssl_ca_certs, ssl_certfile, ssl_keyfile)):
            raise ValueError("ssl_* options need a rediss:// URL")

        def standalone() -> Redis:
            extra = {"max_connections": max_connections} if max_connections else {}
            return Redis.from_url(url, **options, **extra)

        def clustered() -> RedisCluster:
            extra = {"max_connections": max_connections} if max_connections else {}
            return RedisCluster.from_url(url, **options, **extra)

        async def connect() -> RedisClient:
            if cluster is True:
                return clustered()
            client = standalone()
            if cluster is False:
                return client
            try:
                info = await client.info("cluster")
            except ResponseError:
                return client  # a proxy or managed service without INFO: talk to it as one server
            except BaseException:
                await client.aclose()
                raise
            if not info.get("cluster_enabled"):
                return client
            await client.aclose()
            return clustered()

        return cls(connect, settings, name=redact_url(url))

    @classmethod
    def from_client(cls, client: RedisClient, **settings: Any) -> RedisChainCache:
        """A cache on an existing client (its own timeouts and retries apply, plus the deadline)."""

        async def connect() -> RedisClient:
            return client

        return cls(connect, RedisCacheSettings(**settings), name=type(client).__name__)

    # -- state -----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while Redis is being skipped after a failure (reads are then empty, writes dropped);
        true again once the cool-down has passed and the next call may try Redis."""
        return self.breaker.ready()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- ChainCache ------------------------------------------------------------------------------

    async def get_completed(self, key: CacheKey) -> list[ReasonResult] | None:
        keys = self._keys(key)
        if keys is None:
            return None
        limit = self.settings.max_value_bytes

        async def read(r: RedisClient) -> tuple[bytes, int]:
            # A bounded read (one byte more than the cap): a huge value is never transferred. GETRANGE
            # answers b"" for a missing key and for an empty value alike; EXISTS tells them apart.
            async with r.pipeline(transaction=False) as pipe:
                pipe.getrange(keys.done, 0, limit)
                pipe.exists(keys.done)
                return tuple(await pipe.execute())  # type: ignore[return-value]

        answer = await self._call("read a completed answer", read, foreign=keys.done)
        if isinstance(answer, _Failed) or not answer[1]:
            return None
        raw = answer[0]
        if len(raw) > limit:
            await self._discard_oversize(keys.done, None)
            return None
        try:
            return decode_completed(key.digest, raw, key=self._mac_key)
        except InvalidValue as exc:
            await self._discard(keys.done, None, exc)
            return None

    async def put_completed(self, key: CacheKey, results: Sequence[ReasonResult]) -> None:
        keys = self._keys(key)
        if keys is None or not results or not self.breaker.ready():
            return
        value = self._encoded(
            lambda: encode_completed(key.digest, results, key=self._mac_key), "completed answer"
        )
        if value is None:
            return  # the checkpoints stay: they hold each chain's final state and resume at no cost

        async def write(r: RedisClient) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(keys.done, value, px=self.settings.ttl_ms)
                pipe.delete(keys.chains)
                await pipe.execute()

        await self._call("write a completed answer", write)

    async def get_checkpoints(self, key: CacheKey) -> dict[int, Checkpoint]:
        keys = self._keys(key)
        if keys is None:
            return {}
        raw = await self._read_checkpoints(keys.chains)
        states: dict[int, Checkpoint] = {}
        for index, (name, data) in raw.items():
            try:
                states[index] = decode_checkpoint(key.digest, data, index, key=self._mac_key)
            except InvalidValue as exc:
                await self._discard(keys.chains, name, exc)
        return states

    async def _read_checkpoints(self, chains: str) -> dict[int, tuple[bytes, bytes]]:
        """Chain index → (field name, value) of the checkpoint hash, with every size checked before
        anything is read: the number of fields, then each value's length (what is over the caps is
        deleted unread). A miss costs one round trip (HLEN)."""
        count = await self._call("read checkpoints", lambda r: r.hlen(chains), foreign=chains)
        if not count or isinstance(count, _Failed):
            return {}
        if count > MAX_CHECKPOINT_FIELDS:
            await self._discard_oversize(chains, None, f"{count} fields (at most {MAX_CHECKPOINT_FIELDS})")
            return {}
        names = await self._call("read checkpoints", lambda r: r.hkeys(chains))
        if not isinstance(names, list):
            return {}
        indices: dict[int, bytes] = {}
        for name in cast(list[bytes], names):  # the client decodes nothing: names are bytes
            try:
                indices[_field_index(name)] = name
            except InvalidValue as exc:
                await self._discard(chains, name, exc)
        if not indices:
            return {}

        async def lengths(r: RedisClient) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                for name in indices.values():
                    pipe.hstrlen(chains, name)
                return await pipe.execute()  # type: ignore[no-any-return]

        sizes = await self._call("read checkpoints", lengths)
        if not isinstance(sizes, list):
            return {}
        wanted: dict[int, bytes] = {}
        for (index, name), size in zip(indices.items(), sizes, strict=True):
            if size > self.settings.max_value_bytes:
                await self._discard_oversize(chains, name, f"{size} bytes")
            else:  # an empty value too: read, found invalid, deleted
                wanted[index] = name
        if not wanted:
            return {}
        values = await self._call("read checkpoints", lambda r: r.hmget(chains, list(wanted.values())))
        if not isinstance(values, list):
            return {}
        return {
            index: (name, data)
            for (index, name), data in zip(wanted.items(), cast(list[bytes | None], values), strict=True)
            # A value replaced by a larger one since its length was read is skipped, not used.
            if data is not None and len(data) <= self.settings.max_value_bytes
        }

    async def put_checkpoint(self, key: CacheKey, state: Checkpoint) -> None:
        keys = self._keys(key)
        if keys is None or not 0 <= state.chain_index <= _MAX_CHAIN_INDEX or not self.breaker.ready():
            return
        value = self._encoded(lambda: encode_checkpoint(key.digest, state, key=self._mac_key), "checkpoint")
        if value is None:
            return

        async def write(r: RedisClient) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hset(keys.chains, str(state.chain_index), value)
                pipe.pexpire(keys.chains, self.settings.partial_ttl_ms)
                await pipe.execute()

        await self._call("write a checkpoint", write)

    # -- helpers ---------------------------------------------------------------------------------

    def _keys(self, key: CacheKey) -> RedisKeys | None:
        try:
            return RedisKeys.of(key)
        except ValueError as exc:
            self._log.warning("bad-key", "not caching: %s", exc)
            return None

    def _encoded(self, encode: Callable[[], bytes], what: str) -> bytes | None:
        try:
            value = encode()
        except (ValueError, TypeError, OverflowError) as exc:
            self._log.warning("unencodable", "not caching a %s: %s", what, exc)
            return None
        if len(value) > self.settings.max_value_bytes:
            self._log.warning(
                "too-large",
                "not caching a %s of %d bytes (max_value_bytes is %d)",
                what,
                len(value),
                self.settings.max_value_bytes,
            )
            return None
        return value

    async def _discard(self, key: str, field: bytes | None, reason: InvalidValue) -> None:
        """Log and delete an invalid entry (the next run would overwrite it anyway); each kind of
        invalid value has its own log rate limit."""
        where = key if field is None else f"{key} field {field!r:.40}"
        self._log.warning(
            f"invalid-{reason.kind}", "ignoring an invalid cache entry at %s: %s", where, reason
        )
        await self._delete(key, field, "delete an invalid entry")

    async def _discard_oversize(self, key: str, field: bytes | None, size: str | None = None) -> None:
        """Log and delete, unread, an entry over the size caps (UNLINK: Redis frees it in the
        background, so even a huge value does not stall it)."""
        where = key if field is None else f"{key} field {field!r:.40}"
        if size is None:  # a string read only up to the cap: ask its real length, for the log
            length = await self._call("measure an oversize entry", lambda r: r.strlen(key))
            size = f"{length} bytes" if isinstance(length, int) else "size unknown"
        self._log.warning(
            "oversize",
            "deleting an oversize cache entry at %s: %s, over max_value_bytes %d",
            where,
            size,
            self.settings.max_value_bytes,
        )
        await self._delete(key, field, "delete an oversize entry")

    async def _delete(self, key: str, field: bytes | None, what: str) -> None:
        if field is None:
            await self._call(what, lambda r: r.unlink(key))
        else:
            await self._call(what, lambda r: r.hdel(key, field))

    async def _client_for_call(self) -> RedisClient:
        if self._client is None:
            if self._connecting is None:
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._client is None:
                    self._client = await self._connect()
        return self._client

    async def _call(
        self,
        what: str,
        command: Callable[[RedisClient], Awaitable[T]],
        *,
        foreign: str | None = None,
    ) -> T | _Failed:
        """Run one Redis call under the breaker and the deadline; _FAILED instead of raising.

        `foreign`: the key read, deleted if it holds a value of another Redis type (WRONGTYPE).
        """
        if not self.breaker.allow():
            return _FAILED
        client: RedisClient | None = None
        try:
            async with asyncio.timeout(self.settings.deadline_s):
                client = await self._client_for_call()
                result = await command(client)
        except Exception as exc:
            await self._failed(what, exc, foreign, client)
            return _FAILED
        except BaseException:
            self.breaker.abandon()  # cancelled by our caller: no verdict on Redis
            raise
        self._answered()
        return result

    def _answered(self) -> None:
        """Redis answered a call: close the breaker, and say so if it was open."""
        down_for = self.breaker.success()
        if down_for is not None:
            self._log.info(
                "recovered",
                "Redis cache %s is available again after %.1f s; caching resumed",
                self.name,
                down_for,
            )

    async def _failed(
        self, what: str, exc: Exception, foreign: str | None, client: RedisClient | None
    ) -> None:
        if _is_unavailable(exc) or not isinstance(exc, RedisError):
            self._unavailable(what, exc)
            self._drop_client(client)
            return
        self._answered()  # Redis answered, with an error about this one command
        if foreign is not None and "WRONGTYPE" in str(exc):  # also inside a pipeline's error
            self._log.warning("invalid-redis-type", "ignoring a foreign value at %s: %s", foreign, exc)
            await self._call("delete a foreign value", lambda r: r.unlink(foreign))
        else:
            self._log.warning(f"error:{what}", "Redis cache %s could not %s: %s", self.name, what, exc)

    def _unavailable(self, what: str, exc: BaseException) -> None:
        self.breaker.failure()
        self._log.warning(
            "unavailable",
            "Redis cache %s unavailable (could not %s: %s: %s); running without it, next try in %.1f s",
            self.name,
            what,
            type(exc).__name__,
            exc,
            self.breaker.open_for_s,
        )

    def _drop_client(self, client: RedisClient | None) -> None:
        """Forget a client whose Redis failed: its pooled connections may all be dead (a restarted
        server), so the next trial starts from fresh connections (and, for cluster=None, a fresh
        detection). Its connections close in the background."""
        if client is None or client is not self._client:
            return
        self._client = None
        task = asyncio.get_running_loop().create_task(_close_quietly(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


_warned_no_secret = False


def _warn_no_secret_once() -> None:
    global _warned_no_secret
    if not _warned_no_secret:
        _warned_no_secret = True
        logger.warning(
            "no cache secret configured: cache values are authenticated with a random key of this "
            "process, so other replicas and restarted servers will not reuse them; set the same "
            "cache secret on every replica to share answers and resume across servers"
        )


async def _close_quietly(client: RedisClient) -> None:
    try:
        await client.aclose()
    except Exception as exc:  # closing a broken connection may fail too
        logger.debug("closing a Redis client failed: %s", exc)


def _field_index(field: object) -> int:
    text = field.decode("ascii", "replace") if isinstance(field, bytes) else str(field)
    if not text.isdigit() or str(int(text)) != text or int(text) > _MAX_CHAIN_INDEX:
        raise InvalidValue(f"field {text!r:.40} is not a chain index")
    return int(text)


__all__ = [
    "KEY_PREFIX",
    "MAX_CHECKPOINT_FIELDS",
    "VALUE_VERSION",
    "CircuitBreaker",
    "InvalidValue",
    "RedisCacheSettings",
    "RedisChainCache",
    "RedisKeys",
    "decode_checkpoint",
    "decode_completed",
    "encode_checkpoint",
    "encode_completed",
    "mac_key",
    "redact_url",
    "tenant_hash",
]
