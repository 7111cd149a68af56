"""Where the Redis cache keeps a request's entries.

Key layout (one request = one hash tag, so a request's keys share a Cluster slot):

    powersampling:v2:{tenant-hash}:{<digest>}:done     string  the completed answer (all n chains)
    powersampling:v2:{tenant-hash}:{<digest>}:chains   hash    field "<i>": chain i's last checkpoint

`tenant-hash` is the first 16 hex digits of a sha256 of the tenant name, so no tenant name (":", "*",
"{", ...) can escape its namespace; the tenant also enters the request digest, so one tenant can never
read another's entries. Only the last finished block of each chain is kept (each write overwrites
the chain's field); writing the completed answer deletes the checkpoints in the same transaction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from powersampling.cache.base import CacheKey

KEY_PREFIX = "powersampling:v2"  # bump the "v2" together with codec.VALUE_VERSION on incompatible changes

_DIGEST = re.compile(r"[0-9a-f]{64}")


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


__all__ = ["KEY_PREFIX", "RedisKeys", "tenant_hash"]
