"""The cache contract the server relies on: completed answers and per-chain checkpoints (MH's
ChainState after each block, Power-SMC's SmcState after each chunk or sweep).

`ChainCache` is implemented on Redis in `powersampling.cache.redis_cache`; `NullCache` is what runs
when no cache is configured (or for a bypassing request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from powersampling.events import Checkpoint
from powersampling.results import CachePolicy, CacheStatus, ReasonResult


@dataclass(frozen=True, slots=True)
class CacheKey:
    tenant: str
    digest: str  # hex sha256 of the canonical request


class ChainCache(Protocol):
    async def get_completed(self, key: CacheKey) -> list[ReasonResult] | None: ...

    async def put_completed(self, key: CacheKey, results: Sequence[ReasonResult]) -> None: ...

    async def get_checkpoints(self, key: CacheKey) -> dict[int, Checkpoint]: ...

    async def put_checkpoint(self, key: CacheKey, state: Checkpoint) -> None: ...

    async def close(self) -> None: ...


class NullCache:
    """Stores nothing."""

    async def get_completed(self, key: CacheKey) -> list[ReasonResult] | None:
        return None

    async def put_completed(self, key: CacheKey, results: Sequence[ReasonResult]) -> None:
        return None

    async def get_checkpoints(self, key: CacheKey) -> dict[int, Checkpoint]:
        return {}

    async def put_checkpoint(self, key: CacheKey, state: Checkpoint) -> None:
        return None

    async def close(self) -> None:
        return None


__all__ = ["CacheKey", "CachePolicy", "CacheStatus", "ChainCache", "NullCache"]
