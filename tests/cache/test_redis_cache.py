"""RedisChainCache against real redis-server processes: keys, TTLs, bounds, failures, TLS, Cluster."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from powersampling.cache.base import CacheKey
from powersampling.cache.codec import encode_checkpoint
from powersampling.cache.redis_cache import RedisChainCache
from powersampling.cache.redis_keys import KEY_PREFIX, RedisKeys, tenant_hash
from powersampling.cache.resilience import CircuitBreaker, RateLimitedLog, redact_url
from powersampling.events import ChainState
from redis.asyncio import Redis
from redis.crc import key_slot

from .support import RedisServer, free_port, result

KEY = CacheKey("tenant-a", hashlib.sha256(b"request").hexdigest())
KEY_PATTERN = re.compile(rf"{KEY_PREFIX}:[0-9a-f]{{16}}:\{{[0-9a-f]{{64}}\}}:(done|chains)")


def state(chain_index: int = 0, blocks_done: int = 1, length: int = 4) -> ChainState:
    return ChainState(
        chain_index=chain_index,
        seed=11 + chain_index,
        blocks_done=blocks_done,
        token_ids=tuple(range(length)),
        logp=tuple(-0.25 * (i + 1) for i in range(length)),
        logq=tuple(-0.125 * (i + 1) for i in range(length)),
        ended=False,
        finish_reason=None,
        tokens_spent=length,
        mcmc_steps=0,
        accepted_steps=0,
        changed_steps=0,
        skipped_steps=0,
    )


async def raw_client(server: RedisServer) -> Redis:
    return Redis.from_url(server.url)


async def test_checkpoints_overwrite_per_chain_and_go_when_completed(redis_server: RedisServer) -> None:
    cache = RedisChainCache.from_url(redis_server.url)
    r = await raw_client(redis_server)
    try:
        for block in (1, 2, 3):
            await cache.put_checkpoint(KEY, state(0, block, 4 * block))
        await cache.put_checkpoint(KEY, state(1, 1, 4))
        stored = await cache.get_checkpoints(KEY)
        assert stored == {0: state(0, 3, 12), 1: state(1, 1, 4)}
        keys = RedisKeys.of(KEY)
        assert set(await r.hkeys(keys.chains)) == {b"0", b"1"}  # only the last block of each chain

        await cache.put_completed(KEY, [result(0), result(1)])
        assert await cache.get_completed(KEY) == [result(0), result(1)]
        assert not await r.exists(keys.chains)
        assert await cache.get_checkpoints(KEY) == {}
    finally:
        await cache.close()
        await r.aclose()


async def test_keys_are_namespaced_and_share_a_hash_tag(redis_server: RedisServer) -> None:
    cache = RedisChainCache.from_url(redis_server.url)
    r = await raw_client(redis_server)
    try:
        await cache.put_checkpoint(KEY, state())
        other = CacheKey("tenant-a", hashlib.sha256(b"other").hexdigest())
        await cache.put_completed(other, [result()])
        names = sorted(k.decode() for k in await r.keys("*"))
        assert len(names) == 2
        assert all(KEY_PATTERN.fullmatch(k) for k in names), names
        keys = RedisKeys.of(KEY)
        assert key_slot(keys.done.encode()) == key_slot(keys.chains.encode())
        assert keys.done.startswith(f"{KEY_PREFIX}:{tenant_hash('tenant-a')}:{{{KEY.digest}}}")
    finally:
        await cache.close()
        await r.aclose()


@pytest.mark.parametrize("tenant", ["", "a:b", "*", "{x}", "a}{b", "ten ant\n", "ünï🙂", "\ud800"])
def test_tenant_names_cannot_escape_their_namespace(tenant: str) -> None:
    keys = RedisKeys.of(CacheKey(tenant, KEY.digest))
    assert KEY_PATTERN.fullmatch(keys.done) and KEY_PATTERN.fullmatch(keys.chains)
    assert tenant_hash(tenant) != tenant_hash(tenant + "x")


def test_malformed_digests_are_refused() -> None:
    for digest in ["", "abc", "*", "}" + "0" * 63, KEY.digest.upper()]:
        with pytest.raises(ValueError):
            RedisKeys.of(CacheKey("t", digest))


async def test_a_malformed_digest_is_not_cached_and_does_not_raise(redis_server: RedisServer) -> None:
    cache = RedisChainCache.from_url(redis_server.url)
    bad = CacheKey("t", "x*")
    try:
        await cache.put_checkpoint(bad, state())
        assert await cache.get_checkpoints(bad) == {}
        assert await cache.get_completed(bad) is None
    finally:
        await cache.close()


async def test_ttls_are_applied_and_entries_expire(redis_server: RedisServer) -> None:
    cache = RedisChainCache.from_url(redis_server.url, ttl_s=100.0, partial_ttl_s=0.4)
    r = await raw_client(redis_server)
    keys = RedisKeys.of(KEY)
    try:
        await cache.put_checkpoint(KEY, state())
        assert 0 < await r.pttl(keys.chains) <= 400
        other = CacheKey("tenant-a", hashlib.sha256(b"other").hexdigest())
        await cache.put_completed(other, [result()])
        assert 99_000 < await r.pttl(RedisKeys.of(other).done) <= 100_000
        await asyncio.sleep(0.6)
        assert await cache.get_checkpoints(KEY) == {}
    finally:
        await cache.close()
        await r.aclose()


async def test_oversized_values_are_refused(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisChainCache.from_url(redis_server.url, max_value_bytes=2048)
    r = await raw_client(redis_server)
    try:
        with caplog.at_level(logging.WARNING, "powersampling.cache.redis_cache"):
            await cache.put_checkpoint(KEY, state(length=1000))
        assert await r.dbsize() == 0
        assert "max_value_bytes" in caplog.text
        await cache.put_checkpoint(KEY, state(length=10))
        assert await cache.get_checkpoints(KEY) == {0: state(length=10)}
    finally:
        await cache.close()
        await r.aclose()


async def test_invalid_entries_are_ignored_logged_and_deleted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisChainCache.from_url(redis_server.url)
    r = await raw_client(redis_server)
    keys = RedisKeys.of(KEY)
    try:
        await cache.put_checkpoint(KEY, state(0))
        await r.hset(keys.chains, "1", b"\x93garbage")
        await r.hset(keys.chains, "not-a-chain", encode_checkpoint(KEY.digest, state(0)))
        await r.hset(keys.chains, "2", encode_checkpoint(KEY.digest, state(3)))  # another chain's
        await r.set(keys.done, b"")
        with caplog.at_level(logging.WARNING, "powersampling.cache.redis_cache"):
            assert await cache.get_checkpoints(KEY) == {0: state(0)}
            assert await cache.get_completed(KEY) is None
        assert "invalid cache entry" in caplog.text
        assert await r.hkeys(keys.chains) == [b"0"]
        assert not await r.exists(keys.done)

        await r.delete(keys.done, keys.chains)
        await r.rpush(keys.done, b"x")  # another Redis type under our keys
        await r.rpush(keys.chains, b"x")
        assert await cache.get_completed(KEY) is None
        assert await cache.get_checkpoints(KEY) == {}
        assert await r.dbsize() == 0
        assert cache.available
    finally:
        await cache.close()
        await r.aclose()


def test_breaker_cools_down_backs_off_and_recovers() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown_s=1.0, max_cooldown_s=3.0, clock=lambda: now[0])
    assert breaker.allow() and breaker.closed
    breaker.failure()
    breaker.failure()  # a second call that was in flight does not lengthen the cool-down
    assert not breaker.allow() and not breaker.ready()
    now[0] = 1.0
    assert breaker.ready() and breaker.allow()  # the trial
    assert not breaker.allow()  # one trial at a time
    breaker.failure()
    now[0] = 2.5
    assert not breaker.allow()  # the second cool-down is 2 s
    now[0] = 3.0
    assert breaker.allow()
    breaker.failure()
    now[0] = 5.9
    assert not breaker.allow()  # capped at 3 s
    now[0] = 6.0
    assert breaker.allow()
    breaker.abandon()  # the trial was cancelled: another may go
    assert breaker.allow()
    breaker.success()
    assert breaker.closed and breaker.allow() and breaker.allow()


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("ratelimit-test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "ratelimit-test"):
        for _ in range(5):
            log.warning("down", "redis is down")
        log.warning("other", "something else")
        now[0] = 10.0
        log.warning("down", "redis is down")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["redis is down", "something else", "redis is down (4 similar message(s) not logged)"]


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:s3cret@[::1]:6380") == "rediss://user:***@[::1]:6380"
    assert redact_url("redis://host:6379") == "redis://host:6379"


async def test_unreachable_redis_costs_at_most_one_timeout(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisChainCache.from_url(f"redis://127.0.0.1:{free_port()}/0", cooldown_s=60.0)
    try:
        with caplog.at_level(logging.WARNING, "powersampling.cache.redis_cache"):
            started = time.perf_counter()
            assert await cache.get_completed(KEY) is None
            assert not cache.available
            for _ in range(100):  # skipped while the breaker is open: no connection attempts
                assert await cache.get_checkpoints(KEY) == {}
                await cache.put_checkpoint(KEY, state())
            assert time.perf_counter() - started < 0.5
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    finally:
        await cache.close()


async def test_hung_redis_is_cut_off_by_the_timeout() -> None:
    """A server that accepts connections but never answers (a stalled or overloaded Redis)."""
    connections: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisChainCache.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.1)
    try:
        started = time.perf_counter()
        assert await cache.get_completed(KEY) is None
        assert time.perf_counter() - started < 0.5
        assert not cache.available
    finally:
        await cache.close()
        for w in connections:
            w.close()
        server.close()
        await server.wait_closed()


async def test_caching_resumes_after_a_restart(redis_server: RedisServer) -> None:
    cache = RedisChainCache.from_url(redis_server.url, cooldown_s=0.2)
    try:
        await cache.put_checkpoint(KEY, state(0, 1))
        redis_server.stop()
        assert await cache.get_checkpoints(KEY) == {}
        assert not cache.available
        redis_server.start()
        await asyncio.sleep(0.25)
        await cache.put_checkpoint(KEY, state(0, 2))  # the trial call
        assert cache.available
        assert await cache.get_checkpoints(KEY) == {0: state(0, 2)}
    finally:
        await cache.close()


async def test_password_in_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis", "--requirepass", "s3cr:et").start()
    try:
        cache = RedisChainCache.from_url(f"redis://:s3cr%3Aet@127.0.0.1:{server.port}/0")
        await cache.put_checkpoint(KEY, state())
        assert await cache.get_checkpoints(KEY) == {0: state()}
        await cache.close()

        wrong = RedisChainCache.from_url(f"redis://:wrong-pass@127.0.0.1:{server.port}/0")
        with caplog.at_level(logging.DEBUG):
            assert await wrong.get_checkpoints(KEY) == {}
        assert not wrong.available
        assert "unavailable" in caplog.text and "wrong-pass" not in caplog.text
        await wrong.close()
    finally:
        server.stop()


def test_settings_are_validated() -> None:
    for bad in ({"ttl_s": 0}, {"partial_ttl_s": -1.0}, {"timeout_s": float("nan")}, {"max_value_bytes": 10}):
        with pytest.raises(ValueError):
            RedisChainCache.from_url("redis://127.0.0.1:1/0", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisChainCache.from_url("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        RedisChainCache.from_url("redis://127.0.0.1:1", ssl_ca_certs="/ca.pem")


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning every slot (enough to exercise the Cluster client).

    Module-scoped: a new cluster node waits 2 s before it accepts writes.
    """
    workdir = tmp_path_factory.mktemp("cluster")
    server = RedisServer(
        workdir,
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(workdir / "nodes.conf"),
        "--cluster-port", str(free_port()),  # the default, port + 10000, may be taken or out of range
    ).start()  # fmt: skip
    server.cli("cluster", "addslotsrange", "0", "16383")
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in server.cli("cluster", "info"):
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail("the one-node cluster did not come up")
        time.sleep(0.05)
    yield server
    server.stop()


@pytest.mark.parametrize("cluster", [True, None], ids=["cluster", "detected"])
async def test_redis_cluster(cluster_node: RedisServer, cluster: bool | None) -> None:
    from redis.asyncio.cluster import RedisCluster

    cache = RedisChainCache.from_url(f"redis://127.0.0.1:{cluster_node.port}", cluster=cluster)
    try:
        await cache.put_checkpoint(KEY, state(0, 1))
        await cache.put_checkpoint(KEY, state(1, 2))
        assert await cache.get_checkpoints(KEY) == {0: state(0, 1), 1: state(1, 2)}
        await cache.put_completed(KEY, [result(0), result(1)])  # a transaction over both keys
        assert await cache.get_completed(KEY) == [result(0), result(1)]
        assert await cache.get_checkpoints(KEY) == {}
        assert isinstance(cache._client, RedisCluster)
    finally:
        await cache.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    d = tmp_path / "tls"
    d.mkdir()

    def openssl(*args: str) -> None:
        try:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("openssl is not installed")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt")  # fmt: skip
    return {name: str(d / name) for name in ("ca.crt", "server.crt", "server.key")}


async def test_tls(tmp_path: Path, tls_files: dict[str, str]) -> None:
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        "--tls-port", str(tls_port),
        "--tls-cert-file", tls_files["server.crt"],
        "--tls-key-file", tls_files["server.key"],
        "--tls-ca-cert-file", tls_files["ca.crt"],
        "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        server.start(ready_port=tls_port)
    except RuntimeError as exc:
        pytest.skip(f"redis-server without TLS support: {exc}")
    try:
        cache = RedisChainCache.from_url(f"rediss://127.0.0.1:{tls_port}/0", ssl_ca_certs=tls_files["ca.crt"])
        await cache.put_checkpoint(KEY, state())
        assert await cache.get_checkpoints(KEY) == {0: state()}
        assert cache.available
        await cache.close()

        untrusted = RedisChainCache.from_url(f"rediss://127.0.0.1:{tls_port}/0")  # system CAs only
        assert await untrusted.get_checkpoints(KEY) == {}
        assert not untrusted.available
        await untrusted.close()
    finally:
        server.stop()


async def test_detection_falls_back_to_one_server_without_info(tmp_path: Path) -> None:
    """Proxies and some managed services refuse INFO: cluster=None then talks to one server."""
    server = RedisServer(tmp_path / "redis", "--rename-command", "INFO", "").start()
    try:
        cache = RedisChainCache.from_url(server.url)  # cluster=None
        await cache.put_checkpoint(KEY, state())
        assert await cache.get_checkpoints(KEY) == {0: state()}
        assert isinstance(cache._client, Redis)
        await cache.close()
    finally:
        server.stop()
