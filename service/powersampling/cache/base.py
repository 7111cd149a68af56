"""The cache contract the server relies on: completed answers and per-chain checkpoints (MH's
ChainState after each block, Power-SMC's SmcState after each chunk or sweep).

`ChainCache` is implemented on Redis in `powersampling.cache.redis_cache`; `NullCache` is what runs
when no cache is configured (or for a bypassing request).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from powersampling.events import Checkpoint
from powersampling.results import ReasonResult


class CachePolicy(enum.StrEnum):
    USE = "use"  # read what is there (answer or checkpoints), write what is new
    BYPASS = "bypass"  # neither read nor write
    REFRESH = "refresh"  # do not read, overwrite with the new run


class CacheStatus(enum.StrEnum):
    HIT = "hit"  # answered from a completed entry, no engine work
    RESUMED = "resumed"  # continued from stored checkpoints (per block, or per SMC chunk)
    MISS = "miss"  # nothing usable stored; ran from the start
    BYPASS = "bypass"  # the request asked not to use the cache
    DISABLED = "disabled"  # no cache configured, or it is unreachable right now
    UNCACHEABLE = "uncacheable"  # an unseeded request: its answer is a fresh random draw


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
