"""TorchEngine on a tiny random Qwen2 model: exact log-probabilities, determinism, EOS, batching.

Tolerances: log p / log q against a full forward pass agree to 1e-4 (float32 model; incremental
decoding with a padded KV cache versus one unpadded pass differ by rounding only). Tokens are compared
exactly: every row draws from its own seed, so batch composition must not change them.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from powersampling.engines.base import ExtendRequest, Extension
from powersampling.engines.torch_engine import TorchEngine
from powersampling.errors import InvalidArgument
from powersampling.models import fingerprint_folder

ATOL = 1e-4

TEXTS = [
    "Q: 7 * 8?",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog, then power sampling draws from p(x)^alpha.",
    "Lorem ipsum",
]


def prefixes(engine: TorchEngine) -> list[tuple[int, ...]]:
    """Prefixes of clearly different lengths (left padding must not matter)."""
    out = [tuple(engine.tokenize(t)) for t in TEXTS]
    assert len({len(p) for p in out}) == len(out)
    return out


def reference(
    model: Any, prefix: tuple[int, ...], new: tuple[int, ...], temperature: float
) -> tuple[list[float], list[float]]:
    """log p and log q of `new` after `prefix` from one unpadded forward pass over the whole sequence."""
    ids = torch.tensor([list(prefix) + list(new)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    rows = logits[len(prefix) - 1 : len(prefix) - 1 + len(new)]
    idx = torch.tensor(new)[:, None]
    logp = torch.log_softmax(rows, -1).gather(1, idx).squeeze(1)
    if temperature == 0:
        logq = torch.zeros_like(logp)
    else:
        logq = torch.log_softmax(rows / temperature, -1).gather(1, idx).squeeze(1)
    return logp.tolist(), logq.tolist()


def assert_matches_reference(engine: TorchEngine, req: ExtendRequest, ext: Extension) -> None:
    assert len(ext.token_ids) == len(ext.logp) == len(ext.logq) > 0
    assert all(isinstance(v, float) for v in ext.logp + ext.logq)
    logp, logq = reference(engine.model, req.prefix, ext.token_ids, req.temperature)
    assert ext.logp == pytest.approx(logp, abs=ATOL)
    assert ext.logq == pytest.approx(logq, abs=ATOL)


def test_logprobs_match_full_forward_in_padded_batch(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    temps = [1.0, 0.5, 0.25, 2.0]
    reqs = [
        ExtendRequest(prefix=p, max_new_tokens=12, temperature=t, seed=100 + k)
        for k, (p, t) in enumerate(zip(prefixes(engine), temps, strict=True))
    ]
    out = engine.extend_batch(reqs)
    for req, ext in zip(reqs, out, strict=True):
        assert_matches_reference(engine, req, ext)
        if req.temperature == 1.0:
            # Same logits, same temperature: log q is log p exactly.
            assert ext.logq == ext.logp


def test_greedy_is_argmax_with_logq_zero(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    reqs = [ExtendRequest(p, 10, 0.0, seed=k) for k, p in enumerate(prefixes(engine))]
    out = engine.extend_batch(reqs)
    for req, ext in zip(reqs, out, strict=True):
        assert ext.logq == (0.0,) * len(ext.token_ids)
        ids = torch.tensor([list(req.prefix) + list(ext.token_ids)])
        with torch.inference_mode():
            logits = engine.model(input_ids=ids).logits[0].float()
        expected = logits[len(req.prefix) - 1 : -1].argmax(-1).tolist()
        assert list(ext.token_ids) == expected
        assert_matches_reference(engine, req, ext)
    # Greedy ignores the seed.
    again = engine.extend_batch([ExtendRequest(reqs[0].prefix, 10, 0.0, seed=999)])
    assert again[0].token_ids == out[0].token_ids


def test_same_seed_same_tokens_whatever_the_batch(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    ps = prefixes(engine)
    reqs = [ExtendRequest(p, 16, 0.7, seed=7 * k + 1) for k, p in enumerate(ps)]
    batched = engine.extend_batch(reqs)
    alone = [engine.extend_batch([r])[0] for r in reqs]
    reordered = engine.extend_batch(reqs[::-1])[::-1]
    # The same prefix and seed twice in one batch, next to a longer row, still agree.
    dup = engine.extend_batch([reqs[0], reqs[2], reqs[0]])
    for b, a, r in zip(batched, alone, reordered, strict=True):
        assert b.token_ids == a.token_ids == r.token_ids
        assert b.logp == pytest.approx(a.logp, abs=1e-5)
        assert b.logq == pytest.approx(a.logq, abs=1e-5)
    assert dup[0].token_ids == dup[2].token_ids == batched[0].token_ids
    # Different seeds draw differently (16 tokens from a 408-token vocabulary).
    other = engine.extend_batch([ExtendRequest(ps[0], 16, 0.7, seed=12345)])[0]
    assert other.token_ids != batched[0].token_ids


def test_max_new_tokens_is_per_row(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    ps = prefixes(engine)
    budgets = [1, 4, 9, 0]
    out = engine.extend_batch([ExtendRequest(p, n, 1.0, seed=3) for p, n in zip(ps, budgets, strict=True)])
    assert [len(e.token_ids) for e in out] == budgets
    assert out[3] == Extension((), (), (), False)
    assert not any(e.ended_by_eos for e in out)


def test_eos_in_prompt_does_not_stop(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    eos = engine.info.eos_token_ids[0]
    # A chat prompt holds EOS (<|im_end|> closes the user turn); a prefix may even end with it.
    chat = tuple(engine.apply_chat_template([{"role": "user", "content": "What is 7 * 8?"}]))
    assert eos in chat
    reqs = [ExtendRequest(chat, 8, 1.0, seed=5), ExtendRequest((*chat[:-3], eos), 8, 1.0, seed=6)]
    out = engine.extend_batch(reqs)
    for req, ext in zip(reqs, out, strict=True):
        assert len(ext.token_ids) == 8 and not ext.ended_by_eos
        assert_matches_reference(engine, req, ext)


def test_generated_eos_ends_the_row(
    tiny_model: Any, tiny_tokenizer: Any, tiny_torch_engine: TorchEngine
) -> None:
    engine = tiny_torch_engine
    ps = prefixes(engine)
    reqs = [ExtendRequest(p, 24, 1.0, seed=20 + k) for k, p in enumerate(ps)]
    free = engine.extend_batch(reqs)
    # Declare a token the first row draws mid-way as an extra EOS (generation_config holds a list, as
    # real instruct models do): each row must then end right after its first occurrence.
    first = free[0].token_ids
    k = next(i for i in range(3, len(first)) if first[i] not in first[:i])
    stop_token = first[k]
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, stop_token]
    eos_engine = TorchEngine.from_pretrained_objects(model, tiny_tokenizer, name="tiny-eos")
    assert set(eos_engine.info.eos_token_ids) == {tiny_tokenizer.eos_token_id, stop_token}
    out = eos_engine.extend_batch(reqs)
    for req, f, e in zip(reqs, free, out, strict=True):
        if stop_token in f.token_ids:
            cut = f.token_ids.index(stop_token) + 1
            assert e.ended_by_eos and e.token_ids == f.token_ids[:cut]
        else:
            assert not e.ended_by_eos and e.token_ids == f.token_ids
        assert e.logp == pytest.approx(f.logp[: len(e.logp)], abs=1e-5)
        assert_matches_reference(eos_engine, req, e)
    assert out[0].ended_by_eos and len(out[0].token_ids) == k + 1


def test_stop_string_ends_the_row_early(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    prefix = prefixes(engine)[1]
    free = engine.extend_batch([ExtendRequest(prefix, 30, 1.0, seed=11)])[0]
    # A stop string that the free run's text holds from its 10th token on.
    head = engine.detokenize(free.token_ids[:9])
    full = engine.detokenize(free.token_ids[:10])
    stop = full[len(head) - 2 :] if full.startswith(head) and len(full) > len(head) else None
    if not stop or stop in head:
        pytest.skip("the drawn text has no clean stop string at token 10")
    out = engine.extend_batch([ExtendRequest(prefix, 30, 1.0, seed=11, stop=(stop,))])[0]
    assert out.token_ids == free.token_ids[: len(out.token_ids)]
    assert len(out.token_ids) <= 10 and stop in engine.detokenize(out.token_ids)
    assert not out.ended_by_eos


async def test_concurrent_extends_are_packed_into_few_batches(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    ps = prefixes(engine)
    reqs = [ExtendRequest(ps[k % len(ps)], 6, 0.5, seed=k) for k in range(12)]
    before = engine.batches_run
    results = await asyncio.gather(*(engine.extend([r]) for r in reqs))
    assert engine.batches_run - before <= 2  # 12 callers, at most two batches
    expected = [engine.extend_batch([r])[0] for r in reqs]
    assert [r[0].token_ids for r in results] == [e.token_ids for e in expected]


async def test_cancelled_caller_is_dropped(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    ps = prefixes(engine)
    # A long request that draws no EOS in its first 200 tokens: if the batch stops well before
    # 200 steps, the cancellation (not an EOS) took it out.
    free = engine.extend_batch([ExtendRequest(ps[0], 200, 1.0, seed=s) for s in range(8)])
    seed = next(s for s, f in enumerate(free) if len(f.token_ids) == 200)
    forward_calls = 0
    started = threading.Event()

    def count(*_: Any) -> None:
        nonlocal forward_calls
        forward_calls += 1
        started.set()

    handle = engine.model.register_forward_hook(count)
    try:
        long = asyncio.create_task(engine.extend([ExtendRequest(ps[0], 1500, 1.0, seed=seed)]))
        short = asyncio.create_task(engine.extend([ExtendRequest(ps[1], 40, 1.0, seed=2)]))
        while not started.is_set():
            await asyncio.sleep(0.001)
        long.cancel()
        (ext,) = await short
        with pytest.raises(asyncio.CancelledError):
            await long
        assert forward_calls < 200
        assert len(ext.token_ids) == 40 or ext.ended_by_eos
        # The engine keeps serving.
        (after,) = await engine.extend([ExtendRequest(ps[2], 5, 1.0, seed=3)])
        assert len(after.token_ids) == 5 or after.ended_by_eos
    finally:
        handle.remove()


async def test_bad_requests_name_the_field(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    good = ExtendRequest((1, 2, 3), 4, 1.0, 0)
    cases = [
        (ExtendRequest((), 4, 1.0, 0), "requests[1].prefix"),
        (ExtendRequest((1, engine.vocab_size), 4, 1.0, 0), "requests[1].prefix"),
        (ExtendRequest((1, -1), 4, 1.0, 0), "requests[1].prefix"),
        (ExtendRequest((1,) * engine.info.max_context_tokens, 4, 1.0, 0), "requests[1].prefix"),
        (ExtendRequest((1, 2), -1, 1.0, 0), "requests[1].max_new_tokens"),
        (ExtendRequest((1, 2), 4, -0.5, 0), "requests[1].temperature"),
        (ExtendRequest((1, 2), 4, float("nan"), 0), "requests[1].temperature"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidArgument) as err:
            await engine.extend([good, bad])
        assert err.value.field == field
    assert len((await engine.extend([good]))[0].token_ids) == 4


def test_context_window_caps_new_tokens(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    ctx = engine.info.max_context_tokens
    out = engine.extend_batch([ExtendRequest((5,) * (ctx - 3), 10, 1.0, seed=0)])[0]
    assert len(out.token_ids) == 3 or out.ended_by_eos


def test_tokenizer_side_and_info(tiny_torch_engine: TorchEngine, tiny_model_dir: Path) -> None:
    engine = tiny_torch_engine
    text = "def add(a, b): return a + b"
    ids = engine.tokenize(text)
    assert engine.detokenize(ids) == text
    eos = engine.info.eos_token_ids[0]
    # Special tokens are skipped; ids past the tokenizer's table (the model's vocabulary is wider)
    # decode to nothing.
    assert engine.detokenize([*ids, eos, engine.vocab_size - 1]) == text
    assert engine.has_chat_template
    chat = engine.apply_chat_template([{"role": "user", "content": "hi"}])
    assert engine.tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    assert engine.encode_prompt("hi") == chat
    assert engine.encode_prompt("hi", chat=False) == engine.tokenize("hi")
    info = engine.info
    assert info.engine == "torch" and info.model == tiny_model_dir.name and info.device == "cpu"
    assert info.max_context_tokens == 2048 and eos in info.eos_token_ids
    assert info.fingerprint == fingerprint_folder(tiny_model_dir)
    assert engine.vocab_size == len(engine.tokenizer) + 8


def test_in_memory_fingerprint_tracks_the_weights(tiny_model: Any, tiny_tokenizer: Any) -> None:
    a = TorchEngine.from_pretrained_objects(tiny_model, tiny_tokenizer)
    b = TorchEngine.from_pretrained_objects(copy.deepcopy(tiny_model), tiny_tokenizer)
    assert a.info.fingerprint == b.info.fingerprint and len(a.info.fingerprint) == 64
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1e-3
    c = TorchEngine.from_pretrained_objects(changed, tiny_tokenizer)
    assert c.info.fingerprint != a.info.fingerprint
    named = TorchEngine.from_pretrained_objects(tiny_model, tiny_tokenizer, fingerprint="f" * 64)
    assert named.info.fingerprint == "f" * 64


def test_bfloat16_model_reports_float32_logprobs(tiny_model_dir: Path) -> None:
    engine = TorchEngine(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert engine.info.extra["dtype"] == "bfloat16"
    prefix = tuple(engine.tokenize(TEXTS[2]))
    ext = engine.extend_batch([ExtendRequest(prefix, 8, 1.0, seed=4)])[0]
    # One float32 cast of the same logits: at temperature 1, log q equals log p bit for bit.
    assert ext.logq == ext.logp
    logp, _ = reference(engine.model, prefix, ext.token_ids, 1.0)
    assert ext.logp == pytest.approx(logp, abs=0.1)  # bf16 rounding differs between cached and full passes


def test_bad_constructor_arguments(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        TorchEngine(tiny_model_dir, device="cpu", dtype="float8")
    assert err.value.field == "dtype"
    with pytest.raises(InvalidArgument) as err:
        TorchEngine(tmp_path)
    assert err.value.field == "model_dir"
    with pytest.raises(InvalidArgument) as err:
        TorchEngine(tiny_model_dir, device="cpu", max_batch_size=0)
    assert err.value.field == "max_batch_size"


def test_tools_render_through_the_tiny_template(tiny_torch_engine: TorchEngine) -> None:
    engine = tiny_torch_engine
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    assert engine.supports_tools
    plain = engine.encode_prompt([{"role": "user", "content": "hi"}])
    with_tools = engine.encode_prompt([{"role": "user", "content": "hi"}], tools=[tool])
    text = engine.tokenizer.decode(with_tools)
    assert '"name": "get_weather"' in text and "<tool_call>" in text
    assert text.endswith(engine.tokenizer.decode(plain)[-len("hi<|im_end|>\n<|im_start|>assistant\n") :])
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    conversation = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    rendered = engine.tokenizer.decode(engine.encode_prompt(conversation, tools=[tool]))  # type: ignore[arg-type]
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
    assert "<tool_response>\nsunny\n</tool_response>" in rendered
    with pytest.raises(InvalidArgument) as refused:
        engine.encode_prompt(conversation)  # type: ignore[arg-type]
    assert refused.value.field == "messages[2].role"  # a tool result needs the tools
