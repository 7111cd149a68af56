"""`RedisChainCache`: completed answers and per-block checkpoints in Redis (standalone or Cluster).

The key layout is in `powersampling.cache.redis_keys`, the value format (msgpack, sealed with a MAC,
strictly validated) in `powersampling.cache.codec`, the circuit breaker and rate-limited log in
`powersampling.cache.resilience`; this module is the client that ties them to Redis.

Failure behaviour: every Redis call has short socket timeouts and a hard deadline, no retries, and a
circuit breaker: after a connection failure or timeout Redis is skipped for a cool-down (doubling up
to `max_cooldown_s` while it stays down), then one call tries it again. While skipped or failing, reads
return "absent" and writes are dropped, so requests run without the cache and caching resumes by itself
once Redis answers again (logged). Repeated errors are logged at most once per `log_interval_s` per
kind (each kind of invalid value, oversize values, unavailability, each failing command).
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from powersampling.cache.base import CacheKey
from powersampling.cache.codec import (
    MAX_CHAIN_INDEX,
    MIN_SECRET_BYTES,
    VALUE_VERSION,
    InvalidValue,
    decode_checkpoint,
    decode_completed,
    encode_checkpoint,
    encode_completed,
    field_index,
    mac_key,
)
from powersampling.cache.redis_keys import KEY_PREFIX, RedisKeys, tenant_hash
from powersampling.cache.resilience import CircuitBreaker, RateLimitedLog, redact_url
from powersampling.events import Checkpoint
from powersampling.results import ReasonResult

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_PARTIAL_TTL_S = 3600.0
DEFAULT_MAX_VALUE_BYTES = 4 << 20
DEFAULT_TIMEOUT_S = 0.25  # generous enough for a loaded host; a healthy Redis answers in ~1 ms
MAX_CHECKPOINT_FIELDS = 1024  # a request's checkpoint hash holds one field per chain (n <= 1024)

RedisClient = Redis | RedisCluster
T = TypeVar("T")


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
                indices[field_index(name)] = name
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
        if keys is None or not 0 <= state.chain_index <= MAX_CHAIN_INDEX or not self.breaker.ready():
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


__all__ = [
    "KEY_PREFIX",
    "MAX_CHECKPOINT_FIELDS",
    "MIN_SECRET_BYTES",
    "VALUE_VERSION",
    "CircuitBreaker",
    "InvalidValue",
    "RateLimitedLog",
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
