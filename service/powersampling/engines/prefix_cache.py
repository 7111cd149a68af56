"""A bounded cache of attention keys and values, keyed by token ids, for reuse across requests.

Proposals of one Metropolis-Hastings chain share the prompt and the kept prefix; SMC particles share
everything before their last resampling. Keys and values of a token depend only on the tokens before
it, so what one request computed serves every later request that starts with the same tokens.

The cache is a trie of fixed-size blocks of tokens (like vLLM's automatic prefix caching): a node
holds the keys and values of its block's tokens and is reached by the exact token ids of every block
before it, so a lookup is exact (no hashing collisions). A stored sequence's last, shorter block is
kept too (a leaf), and a lookup may end inside a block: after the whole blocks it takes the first
tokens of whichever child block shares the most leading tokens with the rest of the request. So a
proposal from the middle of a cached sequence recomputes only its last prefix token, not up to a
block's worth. The bound is a number of blocks; the least recently used block without children is
evicted first, so a cached prefix never loses an inner block while a longer one stays.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


class _Node:
    __slots__ = ("children", "key", "kv", "parent")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, kv: torch.Tensor | None) -> None:
        self.key = key
        self.parent = parent
        self.kv = kv
        self.children: dict[tuple[int, ...], _Node] = {}


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """Counters since the cache was made: tokens served from it, tokens computed, blocks evicted."""

    hit_tokens: int
    miss_tokens: int
    stored_blocks: int
    evicted_blocks: int
    capacity_blocks: int
    block_size: int
    bytes_used: int


class PrefixKVCache:
    """Keys and values of token blocks, at most `capacity_tokens` tokens (rounded down to blocks).

    A block's tensor is whatever the engine stores for its tokens, with the tokens along `token_axis`
    (the torch engine stores [layers, 2, kv_heads, tokens, head_dim]: axis -2); the cache keeps,
    evicts and, for a lookup that ends inside a block, narrows them along that axis.
    `capacity_tokens` 0 disables the cache: lookups miss, nothing is stored.
    """

    def __init__(self, capacity_tokens: int, block_size: int = 16, token_axis: int = -2) -> None:
        if capacity_tokens < 0:
            raise ValueError("capacity_tokens must be >= 0")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.block_size = block_size
        self.token_axis = token_axis
        self.capacity_blocks = capacity_tokens // block_size
        self._root = _Node((), None, None)
        # Least recently used first. Paths are touched leaf first, so an ancestor is never older than
        # its descendants and the oldest entries are (almost always) leaves.
        self._lru: OrderedDict[_Node, None] = OrderedDict()
        self._bytes = 0
        self.hit_tokens = 0
        self.miss_tokens = 0
        self.evicted_blocks = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_blocks > 0

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            hit_tokens=self.hit_tokens,
            miss_tokens=self.miss_tokens,
            stored_blocks=len(self._lru),
            evicted_blocks=self.evicted_blocks,
            capacity_blocks=self.capacity_blocks,
            block_size=self.block_size,
            bytes_used=self._bytes,
        )

    def _blocks(self, tokens: Sequence[int], count: int) -> list[tuple[int, ...]]:
        """The keys of the first `count` blocks of `tokens` (the last one shorter where tokens end)."""
        bs = self.block_size
        return [tuple(tokens[i * bs : (i + 1) * bs]) for i in range(count)]

    def block_tokens(self, kv: torch.Tensor) -> int:
        """How many tokens a stored or matched block holds."""
        return int(kv.shape[self.token_axis])

    def _touch(self, path: list[_Node]) -> None:
        for node in reversed(path):
            self._lru.move_to_end(node)

    def match(self, tokens: Sequence[int], max_tokens: int) -> list[torch.Tensor]:
        """The cached blocks that start `tokens`, at most `max_tokens` tokens' worth, in order.

        Counts the matched tokens as hits and the rest of `tokens` (what the caller computes) as misses.
        """
        path: list[_Node] = []
        kvs: list[torch.Tensor] = []
        limit = max(0, min(max_tokens, len(tokens)))
        if self.enabled:
            node = self._root
            for key in self._blocks(tokens, limit // self.block_size):
                child = node.children.get(key)
                if child is None:
                    break
                path.append(child)
                kvs.append(child.kv)  # type: ignore[arg-type]
                node = child
            # The rest may start the way one of the next blocks (whole or a stored tail) starts.
            done = len(path) * self.block_size
            rest = tuple(tokens[done : done + min(self.block_size, limit - done)])
            best, shared = None, 0
            for key, child in node.children.items() if rest else ():
                n = _shared_length(key, rest)
                if n > shared:
                    best, shared = child, n
            if best is not None:
                path.append(best)
                assert best.kv is not None
                kvs.append(best.kv if shared == len(best.key) else best.kv.narrow(self.token_axis, 0, shared))
            self._touch(path)
        matched = sum(self.block_tokens(kv) for kv in kvs)
        self.hit_tokens += matched
        self.miss_tokens += len(tokens) - matched
        return kvs

    def insert(self, tokens: Sequence[int], block_kv: Callable[[int, int], list[torch.Tensor]]) -> int:
        """Store the blocks of `tokens` that are not cached yet; returns how many were stored.

        Blocks are `block_size` tokens, the last one shorter where `tokens` ends inside a block (such a
        tail is a leaf: nothing is ever stored below it). `block_kv(first, count)` returns the tensors
        of blocks first .. first+count-1 of `tokens` split that way (called once, for the missing
        blocks only, so the caller copies nothing that is cached).
        """
        if not self.enabled:
            return 0
        keys = self._blocks(tokens, -(-len(tokens) // self.block_size))
        path: list[_Node] = []
        node = self._root
        for key in keys:
            child = node.children.get(key)
            if child is None:
                break
            path.append(child)
            node = child
        first = len(path)
        if first == len(keys) - 1 and len(keys[-1]) < self.block_size:
            # A tail that a cached block already starts with adds nothing.
            tail = keys[-1]
            if any(_shared_length(key, tail) == len(tail) for key in node.children):
                first = len(keys)
        if first == len(keys):
            self._touch(path)
            return 0
        kvs = block_kv(first, len(keys) - first)
        self._touch(path)
        protected = set(path)
        stored = 0
        for key, kv in zip(keys[first:], kvs, strict=True):
            if len(self._lru) >= self.capacity_blocks and not self._evict_one(protected):
                break  # everything left is on this very path: keep what is there
            child = _Node(key, node, kv)
            node.children[key] = child
            self._lru[child] = None
            self._bytes += kv.numel() * kv.element_size()
            protected.add(child)
            path.append(child)
            node = child
            stored += 1
        self._touch(path)
        return stored

    def _evict_one(self, protected: set[_Node]) -> bool:
        for node in self._lru:
            if node.children or node in protected:
                continue
            del self._lru[node]
            assert node.parent is not None
            del node.parent.children[node.key]
            assert node.kv is not None
            self._bytes -= node.kv.numel() * node.kv.element_size()
            node.kv = None
            node.parent = None
            self.evicted_blocks += 1
            return True
        return False

    def clear(self) -> None:
        """Drop every block (counters stay)."""
        self._root = _Node((), None, None)
        self._lru.clear()
        self._bytes = 0


def _shared_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


__all__ = ["PrefixCacheStats", "PrefixKVCache"]
