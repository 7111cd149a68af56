"""Prefix key/value reuse in the TorchEngine: exact log-probabilities, same draws, bounded memory.

Every check compares an engine that reuses cached prefixes with a full forward pass (log p and log q
within 1e-4, as for the engine without reuse) or with an engine that has reuse turned off (tokens
exactly equal: both draw from the same seeds and differ only by float rounding of the logits).
Small blocks (4 tokens) make the tiny model's short prefixes cross many block boundaries.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from powersampling import reason_async
from powersampling.engines import torch_engine
from powersampling.engines.base import ExtendRequest
from powersampling.engines.prefix_cache import PrefixKVCache
from powersampling.engines.torch_engine import TorchEngine
from powersampling.errors import InvalidArgument
from powersampling.models import DEFAULT_MODEL, models_cache_dir

from tests.engines.test_torch_engine import ATOL, TEXTS, reference

BLOCK = 4


def make_engine(model: Any, tokenizer: Any, cache_tokens: int | None, block: int = BLOCK) -> TorchEngine:
    return TorchEngine.from_pretrained_objects(
        model,
        tokenizer,
        name="tiny",
        device="cpu",
        prefix_cache_tokens=cache_tokens,
        prefix_block_tokens=block,
    )


@pytest.fixture
def reuse_engine(tiny_model: Any, tiny_tokenizer: Any) -> TorchEngine:
    return make_engine(tiny_model, tiny_tokenizer, None)


@pytest.fixture
def plain_engine(tiny_model: Any, tiny_tokenizer: Any) -> TorchEngine:
    return make_engine(tiny_model, tiny_tokenizer, 0)


def assert_exact(
    model: Any, prefix: tuple[int, ...], new: list[int], logp: list[float], logq: list[float], t: float
) -> None:
    ref_p, ref_q = reference(model, prefix, tuple(new), t)
    assert logp == pytest.approx(ref_p, abs=ATOL)
    assert logq == pytest.approx(ref_q, abs=ATOL)


def run_chains(
    engine: TorchEngine, prompts: list[tuple[int, ...]], steps: int, seed: int
) -> list[dict[str, Any]]:
    """Independent-MH-like chains, all chains' proposals in one batch per step.

    Each step picks m in the current sequence, extends prompt + x[:m] to the target length and
    accepts by a coin (the coin does not matter here: only how prefixes recur). Returns per chain
    the final tokens with the log p / log q stored along the way, as the sampler keeps them.
    """
    rng = np.random.default_rng(seed)
    target = 24
    chains: list[dict[str, Any]] = [{"x": [], "lp": [], "lq": []} for _ in prompts]
    temperature = 0.25
    for step in range(steps):
        reqs, ms = [], []
        for k, (prompt, chain) in enumerate(zip(prompts, chains, strict=True)):
            m = int(rng.integers(0, len(chain["x"]))) if chain["x"] else 0
            ms.append(m)
            reqs.append(
                ExtendRequest(prompt + tuple(chain["x"][:m]), target - m, temperature, seed=1000 * step + k)
            )
        out = engine.extend_batch(reqs)
        for chain, m, ext in zip(chains, ms, out, strict=True):
            if not chain["x"] or rng.random() < 0.6:
                chain["x"] = chain["x"][:m] + list(ext.token_ids)
                chain["lp"] = chain["lp"][:m] + list(ext.logp)
                chain["lq"] = chain["lq"][:m] + list(ext.logq)
    return chains


def test_many_accept_reject_steps_stay_exact(reuse_engine: TorchEngine, plain_engine: TorchEngine) -> None:
    prompts = [tuple(reuse_engine.tokenize(t)) for t in TEXTS]
    reused = run_chains(reuse_engine, prompts, steps=12, seed=5)
    stats = reuse_engine.prefix_cache.stats()
    assert stats.hit_tokens > stats.miss_tokens  # most prefix tokens came from the cache
    for prompt, chain in zip(prompts, reused, strict=True):
        assert_exact(reuse_engine.model, prompt, chain["x"], chain["lp"], chain["lq"], 0.25)
    # The same run without reuse draws the very same tokens.
    plain = run_chains(plain_engine, prompts, steps=12, seed=5)
    assert plain_engine.prefix_cache.stats().hit_tokens == 0 and len(plain_engine.prefix_cache) == 0
    for a, b in zip(reused, plain, strict=True):
        assert a["x"] == b["x"]
        assert a["lp"] == pytest.approx(b["lp"], abs=1e-5)


def test_particles_sharing_prefixes_after_resampling(
    reuse_engine: TorchEngine, plain_engine: TorchEngine
) -> None:
    """SMC-style: particles grow by chunks; resampling duplicates some and drops others."""
    prompt = tuple(reuse_engine.tokenize(TEXTS[2]))
    rng = np.random.default_rng(3)
    outputs: dict[str, list[tuple[list[int], list[float], list[float]]]] = {}
    for label, engine in (("reuse", reuse_engine), ("plain", plain_engine)):
        particles: list[tuple[list[int], list[float], list[float]]] = [([], [], []) for _ in range(6)]
        rng = np.random.default_rng(3)
        for chunk in range(5):
            reqs = [
                ExtendRequest(prompt + tuple(x), 5, 0.5, seed=100 * chunk + i)
                for i, (x, _, _) in enumerate(particles)
            ]
            out = engine.extend_batch(reqs)
            particles = [
                (x + list(e.token_ids), lp + list(e.logp), lq + list(e.logq))
                for (x, lp, lq), e in zip(particles, out, strict=True)
            ]
            ancestors = np.sort(rng.integers(0, len(particles), len(particles)))
            particles = [
                (list(particles[a][0]), list(particles[a][1]), list(particles[a][2])) for a in ancestors
            ]
        outputs[label] = particles
    for (x, lp, lq), (y, _, _) in zip(outputs["reuse"], outputs["plain"], strict=True):
        assert x == y
        assert_exact(reuse_engine.model, prompt, x, lp, lq, 0.5)
    assert reuse_engine.prefix_cache.stats().hit_tokens > 0


def test_rows_with_different_cached_lengths_share_one_batch(
    reuse_engine: TorchEngine, plain_engine: TorchEngine
) -> None:
    ps = [tuple(reuse_engine.tokenize(t)) for t in TEXTS]
    long = ps[2]
    warm = reuse_engine.extend_batch([ExtendRequest(long, 20, 1.0, seed=1)])[0]
    grown = long + warm.token_ids[:-1]  # every token of it but the last has been computed
    reqs = [
        ExtendRequest(grown, 10, 0.7, seed=11),  # nearly all cached
        ExtendRequest(long[:13], 10, 0.7, seed=12),  # a cached prefix of a cached sequence
        ExtendRequest(ps[0], 10, 0.7, seed=13),  # nothing cached
        ExtendRequest((*long, 5, 6, 7, 8, 9), 10, 0.7, seed=14),  # cached, then fresh tokens
        ExtendRequest(grown, 10, 0.7, seed=11),  # a duplicate of row 0
    ]
    hits = reuse_engine.prefix_cache.hit_tokens
    batched = reuse_engine.extend_batch(reqs)
    assert reuse_engine.prefix_cache.hit_tokens - hits >= 2 * (len(grown) - BLOCK) + 12 + len(long) - BLOCK
    alone = [plain_engine.extend_batch([r])[0] for r in reqs]
    for req, b, a in zip(reqs, batched, alone, strict=True):
        assert b.token_ids == a.token_ids
        assert b.logp == pytest.approx(a.logp, abs=1e-5)
        assert b.logq == pytest.approx(a.logq, abs=1e-5)
        assert_exact(reuse_engine.model, req.prefix, list(b.token_ids), list(b.logp), list(b.logq), 0.7)
    # Duplicate rows draw the same tokens; their log-probabilities may differ in the last bits (a
    # matrix product need not round every row of a batch alike).
    assert batched[0].token_ids == batched[4].token_ids
    assert batched[0].logp == pytest.approx(batched[4].logp, abs=1e-5)


def test_cache_stays_under_its_bound_and_evicts(tiny_model: Any, tiny_tokenizer: Any) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer, cache_tokens=10 * BLOCK)
    cache = engine.prefix_cache
    assert cache.capacity_blocks == 10 and engine.info.extra["prefix_cache_tokens"] == str(10 * BLOCK)
    layers, two, heads, dim = engine._kv_shape
    block_bytes = layers * two * heads * dim * BLOCK * 4
    rng = np.random.default_rng(0)
    for k in range(8):  # 8 unrelated sequences of ~30 tokens: far more than 10 blocks
        prefix = tuple(int(t) for t in rng.integers(5, 300, 12))
        out = engine.extend_batch([ExtendRequest(prefix, 16, 1.0, seed=k)])[0]
        assert len(cache) <= 10 and cache.bytes_used <= 10 * block_bytes
        assert_exact(engine.model, prefix, list(out.token_ids), list(out.logp), list(out.logq), 1.0)
    assert cache.evicted_blocks > 0
    # Whole blocks and shorter tails: never more than whole blocks' worth, always whole tokens' worth.
    assert 0 < cache.bytes_used <= len(cache) * block_bytes
    assert cache.bytes_used % (block_bytes // BLOCK) == 0
    assert int(engine.info.extra["prefix_cache_evicted_blocks"]) == cache.evicted_blocks
    # The most recent sequence is still served from the cache.
    hits = cache.hit_tokens
    again = engine.extend_batch([ExtendRequest(prefix + out.token_ids[:4], 4, 1.0, seed=1)])[0]
    assert cache.hit_tokens - hits >= BLOCK
    assert_exact(
        engine.model,
        prefix + out.token_ids[:4],
        list(again.token_ids),
        list(again.logp),
        list(again.logq),
        1.0,
    )


def fake_blocks(tokens: list[int], block: int = 2) -> Any:
    """block_kv for a cache test: block i is a [tokens, 1] tensor holding each token's id."""
    return lambda first, count: [
        torch.tensor(tokens[i * block : (i + 1) * block], dtype=torch.float32)[:, None]
        for i in range(first, first + count)
    ]


def ids_of(kvs: list[torch.Tensor]) -> list[list[int]]:
    return [[int(v) for v in kv[:, 0]] for kv in kvs]


def test_lru_evicts_the_oldest_leaf_never_an_inner_block() -> None:
    cache = PrefixKVCache(capacity_tokens=5 * 2, block_size=2)
    a = [1, 2, 3, 4, 5, 6]  # three blocks
    assert cache.insert(a, fake_blocks(a)) == 3
    b = [9, 9, 8, 8]
    assert cache.insert(b, fake_blocks(b)) == 2  # five blocks: the capacity
    assert len(cache) == 5 and cache.evicted_blocks == 0 and cache.bytes_used == 5 * 2 * 4
    assert cache.insert([1, 2, 7, 7], fake_blocks([1, 2, 7, 7])) == 1  # shares a's first block
    assert len(cache) == 5 and cache.evicted_blocks == 1
    # a's third block went (the least recent leaf); its first two stay, the shared one is inner.
    assert ids_of(cache.match(a, 6)) == [[1, 2], [3, 4]]
    assert ids_of(cache.match([1, 2, 7, 7], 4)) == [[1, 2], [7, 7]]
    # match never returns more than max_tokens' tokens: here a whole block and one token of the next.
    assert ids_of(cache.match(a, 3)) == [[1, 2], [3]]
    assert ids_of(cache.match([9, 9, 8, 8], 4)) == [[9, 9], [8, 8]]
    off = PrefixKVCache(0, 4)
    assert not off.enabled and off.insert(a, fake_blocks(a)) == 0 and off.match(a, 6) == []


def test_lookups_end_inside_blocks_and_tails_are_kept() -> None:
    cache = PrefixKVCache(capacity_tokens=100, block_size=4)
    seq = [1, 2, 3, 4, 5, 6, 7]  # one whole block and a 3-token tail
    assert cache.insert(seq, fake_blocks(seq, 4)) == 2
    assert ids_of(cache.match(seq, 7)) == [[1, 2, 3, 4], [5, 6, 7]]
    # A request that leaves the cached sequence inside a block reuses every token up to there.
    assert ids_of(cache.match([1, 2, 3, 4, 5, 9, 9], 6)) == [[1, 2, 3, 4], [5]]
    assert ids_of(cache.match([1, 2, 9], 2)) == [[1, 2]]
    assert cache.match([8, 2, 3], 2) == []
    hits, misses = cache.hit_tokens, cache.miss_tokens
    cache.match([1, 2, 3, 4, 5, 6, 0, 0], 7)
    assert (cache.hit_tokens - hits, cache.miss_tokens - misses) == (6, 2)
    # A longer sequence stores its whole blocks beside the tail; lookups take the longest match.
    longer = [1, 2, 3, 4, 5, 6, 8, 8, 2]
    assert cache.insert(longer, fake_blocks(longer, 4)) == 2
    assert ids_of(cache.match(longer, 9)) == [[1, 2, 3, 4], [5, 6, 8, 8], [2]]
    assert ids_of(cache.match(seq, 7)) == [[1, 2, 3, 4], [5, 6, 7]]
    # A tail that a cached block already starts with is not stored again.
    assert cache.insert([1, 2, 3, 4, 5, 6], fake_blocks([1, 2, 3, 4, 5, 6], 4)) == 0
    assert cache.insert([1, 2, 3, 4, 5, 6, 8, 8], fake_blocks([1, 2, 3, 4, 5, 6, 8, 8], 4)) == 0


def test_a_proposal_from_inside_a_cached_sequence_computes_one_token(
    reuse_engine: TorchEngine,
) -> None:
    """After a sequence is generated, a proposal from any position m recomputes only its last prefix
    token (whose logits draw the first new token), and stays exact."""
    cache = reuse_engine.prefix_cache
    prompt = tuple(reuse_engine.tokenize(TEXTS[1]))
    (first,) = reuse_engine.extend_batch([ExtendRequest(prompt, 13, 0.5, seed=3)])
    x = list(first.token_ids)
    for m in (1, 2, 5, 6, 9, 12):
        misses = cache.miss_tokens
        (ext,) = reuse_engine.extend_batch([ExtendRequest(prompt + tuple(x[:m]), 4, 0.5, seed=m)])
        assert cache.miss_tokens - misses == 1, m
        assert_exact(
            reuse_engine.model,
            prompt + tuple(x[:m]),
            list(ext.token_ids),
            list(ext.logp),
            list(ext.logq),
            0.5,
        )


async def test_sampler_draws_the_same_chains_with_and_without_reuse(
    tiny_model: Any, tiny_tokenizer: Any, reuse_engine: TorchEngine, plain_engine: TorchEngine
) -> None:
    """Prefix reuse and continuous batching are invisible to the sampler: same seeds, same chains."""
    batch_at_a_time = TorchEngine.from_pretrained_objects(
        tiny_model, tiny_tokenizer, prefix_cache_tokens=0, continuous_batching=False
    )
    assert reuse_engine.continuous and not batch_at_a_time.continuous
    options = dict(method="power", max_new_tokens=24, block_size=8, mcmc_steps=3, n=4, seed=42, chat=False)
    runs = await asyncio.gather(
        *(reason_async(TEXTS[2], e, **options) for e in (reuse_engine, plain_engine, batch_at_a_time))
    )
    for results in runs[1:]:
        assert [r.token_ids for r in results] == [r.token_ids for r in runs[0]]
        assert [r.log_prob for r in results] == pytest.approx([r.log_prob for r in runs[0]], abs=1e-4)
    assert int(reuse_engine.info.extra["prefix_cache_hit_tokens"]) > 0
    # Each chain's log p is that of a full forward pass over its answer.
    prompt = tuple(reuse_engine.tokenize(TEXTS[2]))
    for r in runs[0]:
        logp, _ = reference(reuse_engine.model, prompt, tuple(r.token_ids), 1.0)
        assert r.log_prob == pytest.approx(sum(logp), abs=ATOL * len(logp))
    await batch_at_a_time.close()


@pytest.mark.parametrize("padding_limit", [0, 10**9], ids=["own-pass", "one-pass"])
async def test_requests_join_a_running_batch(
    reuse_engine: TorchEngine, plain_engine: TorchEngine, padding_limit: int, monkeypatch: Any
) -> None:
    """Requests that arrive while a batch decodes join it between steps and come back exact.

    Both ways of admitting them: in the running rows' forward pass, or in a pass of their own
    joined to the running batch afterwards.
    """
    engine = reuse_engine
    engine.admission_padding_limit = padding_limit
    joins = 0
    join = torch_engine._join_batches

    def counted_join(*args: Any) -> torch.Tensor:
        nonlocal joins
        joins += 1
        return join(*args)

    monkeypatch.setattr(torch_engine, "_join_batches", counted_join)
    ps = [tuple(engine.tokenize(t)) for t in TEXTS]
    # A long row that draws no EOS in 300 tokens keeps the batch running while the others arrive.
    free = plain_engine.extend_batch([ExtendRequest(ps[2], 300, 1.0, seed=s) for s in range(8)])
    seed = next(s for s, f in enumerate(free) if len(f.token_ids) == 300)
    steps = 0

    def count(*_: Any) -> None:
        nonlocal steps
        steps += 1

    late = [
        ExtendRequest(ps[2] + free[seed].token_ids[:9], 12, 0.5, seed=1),  # mostly cached by then
        ExtendRequest(ps[0], 12, 0.5, seed=2),
        ExtendRequest(ps[1], 30, 2.0, seed=3),
        ExtendRequest(ps[3], 0, 0.5, seed=4),
    ]
    batches = engine.batches_run
    handle = engine.model.register_forward_hook(count)
    try:
        long = asyncio.create_task(engine.extend([ExtendRequest(ps[2], 300, 1.0, seed=seed)]))
        while steps < 20:
            await asyncio.sleep(0.001)
        first = await engine.extend(late[:2])
        second = await engine.extend(late[2:])
        (long_ext,) = await long
    finally:
        handle.remove()
    assert engine.batches_run - batches == 1  # everything ran in the long row's batch
    assert (joins > 0) == (padding_limit == 0)  # own passes joined to the batch, or none
    assert long_ext.token_ids == free[seed].token_ids
    assert long_ext.logp == pytest.approx(free[seed].logp, abs=1e-5)
    for req, ext in zip(late, first + second, strict=True):
        alone = plain_engine.extend_batch([req])[0]
        assert ext.token_ids == alone.token_ids
        if req.max_new_tokens:
            assert_exact(
                engine.model, req.prefix, list(ext.token_ids), list(ext.logp), list(ext.logq), req.temperature
            )


def test_bad_prefix_cache_arguments(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        TorchEngine(tiny_model_dir, device="cpu", prefix_cache_tokens=-1)
    assert err.value.field == "prefix_cache_tokens"
    with pytest.raises(InvalidArgument) as err:
        TorchEngine(tiny_model_dir, device="cpu", prefix_block_tokens=0)
    assert err.value.field == "prefix_block_tokens"


@pytest.mark.slow  # loads the default 0.5B model: about a minute on two cores
def test_default_model_stays_exact_through_reuse() -> None:
    folder = models_cache_dir() / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        pytest.skip(f"the default model is not prepared in {folder}")
    engine = TorchEngine(folder, device="cpu", dtype="float32")
    prompts = [
        tuple(engine.encode_prompt("What is 17 + 25?")),
        tuple(engine.tokenize("Q: What is 37 + 48?\nA:")),
    ]
    chains = run_chains(engine, prompts, steps=5, seed=1)
    assert engine.prefix_cache.stats().hit_tokens > 0
    for prompt, chain in zip(prompts, chains, strict=True):
        assert_exact(engine.model, prompt, chain["x"], chain["lp"], chain["lq"], 0.25)
