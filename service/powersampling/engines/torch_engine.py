"""The transformers reference engine: padded batches, KV cache, exact float32 log p and log q.

Requests run as ONE padded batch: a forward pass over their prefixes, then incremental decoding with
the model's KV cache, one token per row and step. Rows leave the batch (and the cache) as soon as
they end, by EOS, by their own `max_new_tokens`, by a stop string or because their caller went away.
With continuous batching (the default) each result goes back as its row ends, and requests that
arrive meanwhile join the running batch between two steps: their prefix tokens run in the same
forward pass as the running rows' next token, after which the cache is compacted.

Prefix reuse: keys and values of every computed token go into a bounded prefix cache (see
`prefix_cache.py`), and a later request that starts with the same tokens (a chain's next proposal,
an SMC particle after resampling) computes only the tokens past its longest cached prefix. In one
forward pass, row j's slots are [gap | its past (cached blocks or running cache) | gap | its new
tokens], each part right-aligned, gaps masked out, every token at its true position id. The
contract stays stateless: what comes back is what a full forward pass over each prefix would give,
up to float rounding.

Per row and step, log p = log_softmax(logits) and log q = log_softmax(logits / temperature) come from
the same logits cast to float32, whatever the model's dtype. A token is drawn from q by inverse CDF
over the float64 cumulative of exp(log q), with one uniform per step taken from a generator seeded by
the row's seed alone, so a row's tokens do not depend on what else shares the batch. There is no
top-k, top-p or repetition penalty: the Metropolis-Hastings ratio needs q exactly as reported.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from powersampling.engines.base import BatchingEngine, EngineInfo, ExtendRequest, Extension
from powersampling.engines.hf_tokenizer import HuggingFaceTokenizer
from powersampling.engines.prefix_cache import PrefixKVCache
from powersampling.errors import EngineError, EngineOverloaded, InvalidArgument
from powersampling.models import fingerprint_folder, fingerprint_state_dict
from powersampling.models.eos import collect_eos_ids

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_EMPTY = Extension(token_ids=(), logp=(), logq=(), ended_by_eos=False)

# The default prefix cache holds as many tokens as this many bytes of keys and values take
# (about 43,000 tokens of the default 0.5B model in float32).
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
# Tokens per cache block: a lookup reuses whole blocks, so up to this many cached tokens are recomputed.
DEFAULT_PREFIX_BLOCK_TOKENS = 16


@dataclass(slots=True)
class EngineProfile:
    """Where the worker thread's time went (seconds) and how full the decode steps were.

    On a GPU, time is charged to whichever phase waits for the device: the per-step host sync sits
    in `draw_s`.
    """

    prefill_s: float = 0.0  # forward passes over prefixes (after prefix reuse), with the past's assembly
    decode_s: float = 0.0  # one-token forward passes
    draw_s: float = 0.0  # log-softmax, sampling, the host sync
    cache_s: float = 0.0  # copying keys and values into the prefix cache
    prefill_tokens: int = 0  # prefix tokens computed (cached ones are not)
    prefill_passes: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # sum over decode steps of the rows in the batch

    @property
    def mean_decode_rows(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InvalidArgument("device", f"unknown device {device!r}: use 'cpu', 'cuda' or 'auto'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device", "cuda was asked for but torch sees no CUDA device")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # GPUs run bfloat16 natively (the prepared folders store bfloat16). On most CPUs bfloat16
        # matmuls are emulated and slower than float32, so the CPU computes in float32.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise InvalidArgument(
            "dtype", f"unknown dtype {dtype!r}; use auto, {', '.join(sorted(_DTYPES))}"
        ) from None


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _compact(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Move every row's used slots (mask 1) to the right end, in order; returns the new mask.

    Keys carry their positions (rotary embeddings are applied before caching), so slots may move.
    """
    n, width = mask.shape
    columns = torch.arange(width, device=mask.device).expand(n, width)
    # Unused slots sort first as -1; used ones keep their order at the right end.
    order = torch.sort(torch.where(mask.bool(), columns, -1), dim=1).values
    keep = int(mask.sum(1).max())
    order = order[:, width - keep :]
    new_mask = (order >= 0).long()
    index = order.clamp(min=0)
    for layer in cache.layers:
        heads, dim = layer.keys.shape[1], layer.keys.shape[3]
        gather = index[:, None, :, None].expand(n, heads, keep, dim)
        layer.keys = layer.keys.gather(2, gather)
        layer.values = layer.values.gather(2, gather)
    return new_mask


def _trim_left(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading slots that no row uses (left after longer rows left the batch)."""
    first = int(mask.any(0).long().argmax())
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    return mask[:, first:]


def _join_batches(cache: Any, mask: torch.Tensor, other: Any, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows to `cache`'s, left-padding the narrower; returns the joined mask."""
    width = max(mask.shape[1], other_mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer, extra in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([pad(layer.keys, 2), pad(extra.keys, 2)])
        layer.values = torch.cat([pad(layer.values, 2), pad(extra.values, 2)])
    return torch.cat([pad(mask, 1), pad(other_mask, 1)])


@dataclass(slots=True)
class _Row:
    """One request in the running batch."""

    index: int
    request: ExtendRequest
    budget: int
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    ended_by_eos: bool = False
    uniforms: np.ndarray = field(init=False)
    stop_window: int = field(init=False)

    def __post_init__(self) -> None:
        # One uniform per step, drawn up front from the row's seed alone (PCG64).
        self.uniforms = np.random.default_rng(self.request.seed % (1 << 64)).random(self.budget)
        stop = self.request.stop
        self.stop_window = 2 * max(len(s) for s in stop) + 8 if stop else 0

    def extension(self) -> Extension:
        return Extension(
            token_ids=tuple(self.tokens),
            logp=tuple(self.logp),
            logq=tuple(self.logq),
            ended_by_eos=self.ended_by_eos,
        )


class TorchEngine(HuggingFaceTokenizer, BatchingEngine):
    """A Hugging Face causal LM run with PyTorch, batched with left padding and a KV cache.

    `model_dir` is a local transformers folder (config.json, safetensors, tokenizer); nothing is ever
    fetched from a hub. `fingerprint` defaults to `fingerprint_folder(model_dir)`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_batch_size: int = 32,
        fingerprint: str | None = None,
        prefix_cache_tokens: int | None = None,
        prefix_block_tokens: int = DEFAULT_PREFIX_BLOCK_TOKENS,
        continuous_batching: bool = True,
    ) -> None:
        """Load `model_dir`.

        prefix_cache_tokens bounds the prefix key/value cache in tokens (None: as many as
        `DEFAULT_PREFIX_CACHE_BYTES` hold; 0 turns prefix reuse off); prefix_block_tokens is its block
        size. continuous_batching admits requests into a running batch between decoding steps (off:
        a batch runs to its longest row while new requests wait).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InvalidArgument("model_dir", f"{path} is not a model folder (no config.json)")
        resolved_device = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, resolved_device)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load the model in {path}: {exc}") from exc
        self._setup(
            model,
            tokenizer,
            name=name or path.name,
            fingerprint=fingerprint or fingerprint_folder(path),
            device=resolved_device,
            max_batch_size=max_batch_size,
            prefix_cache_tokens=prefix_cache_tokens,
            prefix_block_tokens=prefix_block_tokens,
            continuous_batching=continuous_batching,
        )

    @classmethod
    def from_pretrained_objects(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "in-memory",
        fingerprint: str | None = None,
        device: str | torch.device | None = None,
        max_batch_size: int = 32,
        prefix_cache_tokens: int | None = None,
        prefix_block_tokens: int = DEFAULT_PREFIX_BLOCK_TOKENS,
        continuous_batching: bool = True,
    ) -> TorchEngine:
        """An engine on an already built model and tokenizer (e.g. a tiny random model in tests).

        The model stays on its current device unless `device` is given; the fingerprint defaults to
        a hash of the config and state dict.
        """
        engine = cls.__new__(cls)
        resolved = resolve_device(device) if device is not None else next(model.parameters()).device
        engine._setup(
            model,
            tokenizer,
            name=name,
            fingerprint=fingerprint or fingerprint_state_dict(model),
            device=resolved,
            max_batch_size=max_batch_size,
            prefix_cache_tokens=prefix_cache_tokens,
            prefix_block_tokens=prefix_block_tokens,
            continuous_batching=continuous_batching,
        )
        return engine

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        fingerprint: str,
        device: torch.device,
        max_batch_size: int,
        prefix_cache_tokens: int | None,
        prefix_block_tokens: int,
        continuous_batching: bool,
    ) -> None:
        BatchingEngine.__init__(self, max_batch_size=max_batch_size)
        self.continuous = continuous_batching
        # Admitting rows pads every running row to the new rows' fresh width in one forward pass.
        # Past this many padded positions the new rows get a pass of their own instead. On a CPU a
        # position costs about a fifteenth of a one-row pass (which mostly reads the weights), so a
        # fresh prompt joining a running batch is far cheaper alone; a few fresh tokens are not
        # worth a pass. On a GPU positions are nearly free and an extra pass is what costs.
        self.admission_padding_limit = 64 if device.type == "cpu" else 1024
        if prefix_cache_tokens is not None and prefix_cache_tokens < 0:
            raise InvalidArgument("prefix_cache_tokens", "must be >= 0 (0 turns prefix reuse off)")
        if prefix_block_tokens < 1:
            raise InvalidArgument("prefix_block_tokens", "must be at least 1")
        self.model = model.to(device).eval()
        self._init_tokenizer(tokenizer, name)
        self.device = device
        text_config = model.config.get_text_config()
        output = model.get_output_embeddings()
        # The logits' width is the model's vocabulary (it may exceed the tokenizer's, padded for speed):
        # p is defined over all of it, so sampling and ids accepted in prefixes use it too.
        self._vocab_size = int(output.weight.shape[0]) if output is not None else int(text_config.vocab_size)
        generation_config = getattr(model, "generation_config", None)
        eos = collect_eos_ids(generation_config, text_config, tokenizer, vocab_size=self._vocab_size)
        if not eos:
            raise EngineError(
                f"model {name!r} declares no EOS token (generation_config, config or tokenizer)"
            )
        self._eos = tuple(eos)
        # transformers renamed `past_key_values` to `cache` (5.x); use whichever this model takes.
        params = inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        pad = tokenizer.pad_token_id
        # Padded positions are masked out, so any valid id will do.
        self._pad_id = int(pad) if isinstance(pad, int) and 0 <= pad < self._vocab_size else self._eos[0]
        max_ctx = getattr(text_config, "max_position_embeddings", None)
        self._max_context = int(max_ctx) if isinstance(max_ctx, int) and max_ctx > 0 else 1 << 20
        param = next(model.parameters())
        # Keys and values per token: [layers, 2, kv_heads, head_dim] in the model's dtype.
        heads = int(getattr(text_config, "num_attention_heads", 1))
        kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
        head_dim = getattr(text_config, "head_dim", None) or int(text_config.hidden_size) // heads
        layers = int(text_config.num_hidden_layers)
        self._kv_shape = (layers, 2, kv_heads, int(head_dim))
        bytes_per_token = layers * 2 * kv_heads * int(head_dim) * param.element_size()
        if prefix_cache_tokens is None:
            prefix_cache_tokens = DEFAULT_PREFIX_CACHE_BYTES // bytes_per_token
        # Only full attention over a plain growing cache can be cut into token blocks; sliding windows
        # and other layer kinds (Gemma 3's local layers) run without prefix reuse.
        layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
        if any(t != "full_attention" for t in layer_types) or getattr(
            text_config, "use_sliding_window", False
        ):
            prefix_cache_tokens = 0
        self.prefix_cache = PrefixKVCache(prefix_cache_tokens, prefix_block_tokens)
        self.profile = EngineProfile()
        self._info = EngineInfo(
            engine="torch",
            model=name,
            fingerprint=fingerprint,
            max_context_tokens=self._max_context,
            eos_token_ids=self._eos,
            device=str(device),
            extra={
                "dtype": str(param.dtype).removeprefix("torch."),
                "architecture": type(model).__name__,
                "prefix_cache_tokens": str(self.prefix_cache.capacity_blocks * prefix_block_tokens),
                "continuous_batching": str(continuous_batching).lower(),
            },
        )

    # ------------------------------------------------------------------ tokenizer side

    @property
    def info(self) -> EngineInfo:
        """Static facts plus the prefix cache's counters (tokens reused and computed, evictions)."""
        stats = self.prefix_cache.stats()
        live = {
            "prefix_cache_hit_tokens": str(stats.hit_tokens),
            "prefix_cache_miss_tokens": str(stats.miss_tokens),
            "prefix_cache_evicted_blocks": str(stats.evicted_blocks),
            "prefix_cache_bytes": str(stats.bytes_used),
        }
        return dataclasses.replace(self._info, extra={**self._info.extra, **live})

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    # ------------------------------------------------------------------ generation

    async def extend(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        # Validate here, in the caller's task, so a bad request fails its caller and not the whole batch.
        self.check_requests(requests)
        return await super().extend(requests)

    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        """Extend all `requests` as one padded batch; results in the order of `requests`."""
        self.check_requests(requests)
        results: list[Extension] = [_EMPTY] * len(requests)

        def finish(index: int, extension: Extension) -> None:
            results[index] = extension

        self._run_rows(list(enumerate(requests)), lambda _limit: [], finish)
        return results

    def run_continuous(self, requests: Sequence[ExtendRequest]) -> None:
        """Run `requests` and every request admitted between decoding steps; deliver each as it ends."""
        self._run_rows(list(enumerate(requests)), self.admit, self.deliver)

    def _run_rows(
        self,
        requests: list[tuple[int, ExtendRequest]],
        admit: Callable[[int], list[tuple[int, ExtendRequest]]],
        finish: Callable[[int, Extension], None],
    ) -> None:
        """Decode rows until none is left, taking new ones from `admit` between steps.

        A step that admits rows runs their prefixes (past their cached part) in the same forward pass
        as the running rows' next token; then the batch's cache is compacted so that every row's
        slots are contiguous and right-aligned again.
        """
        try:
            with torch.inference_mode():
                self._decode_loop(requests, admit, finish)
        except torch.OutOfMemoryError as exc:
            raise EngineOverloaded(f"out of memory on {self.device} for a batch") from exc

    def _decode_loop(
        self,
        requests: list[tuple[int, ExtendRequest]],
        admit: Callable[[int], list[tuple[int, ExtendRequest]]],
        finish: Callable[[int, Extension], None],
    ) -> None:
        device = self.device
        alive: list[_Row] = []
        cache: Any = None
        mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        last_pos = torch.zeros((0, 1), dtype=torch.long, device=device)
        token = torch.zeros((0,), dtype=torch.long, device=device)
        reuse = self.prefix_cache.enabled
        while True:
            new_rows: list[_Row] = []
            for index, request in requests:
                if self.is_cancelled(index):
                    continue
                budget = min(request.max_new_tokens, self._max_context - len(request.prefix))
                if budget <= 0:
                    finish(index, _EMPTY)
                    continue
                new_rows.append(_Row(index, request, budget))
            if not alive and not new_rows:
                return
            clock = time.perf_counter()
            if new_rows:
                logits, cache, mask, last_pos = self._admit_rows(
                    alive, new_rows, cache, mask, last_pos, token
                )
                reuse = reuse and all(type(layer) is DynamicLayer for layer in cache.layers)
                alive = alive + new_rows
                clock = self._charge("prefill_s", clock)
            else:
                logits, cache, mask, last_pos = self._decode_step(cache, mask, last_pos, token)
                clock = self._charge("decode_s", clock)

            # One uniform per row and step from the row's own seeded stream: what shares the batch,
            # and when the row joined it, cannot change its draws.
            u = torch.tensor([row.uniforms[len(row.tokens)] for row in alive], dtype=torch.float64)
            temps = torch.tensor([row.request.temperature or 1.0 for row in alive])
            greedy = torch.tensor([row.request.temperature == 0 for row in alive])
            token, lp, lq = self._draw(logits, temps.to(device), greedy.to(device), u.to(device))
            # The one host sync per step (float32 values are exact in float64).
            drawn = torch.stack((token.double(), lp.double(), lq.double())).tolist()
            clock = self._charge("draw_s", clock)

            keep: list[int] = []
            ended: list[int] = []
            for b, row in enumerate(alive):
                t = int(drawn[0][b])
                row.tokens.append(t)
                row.logp.append(drawn[1][b])
                row.logq.append(drawn[2][b])
                if t in self._eos:
                    row.ended_by_eos = True
                    ended.append(b)
                elif (
                    len(row.tokens) < row.budget
                    and not self.is_cancelled(row.index)
                    and not self._hit_stop(row.tokens, row.request.stop, row.stop_window)
                ):
                    keep.append(b)
                else:
                    ended.append(b)
            for b in ended:
                row = alive[b]
                if self.is_cancelled(row.index):
                    continue  # its caller is gone: the result would be thrown away
                if reuse:
                    clock = time.perf_counter()
                    self._store(cache, mask, b, row.request.prefix + tuple(row.tokens[:-1]))
                    self._charge("cache_s", clock)
                if not all(math.isfinite(v) for v in row.logp):
                    raise EngineError(f"model {self._info.model!r} produced non-finite logits")
                finish(row.index, row.extension())
            if len(keep) < len(alive):
                # Finished rows leave the batch and the KV cache: they cost nothing from now on.
                alive = [alive[b] for b in keep]
                if alive:
                    sel = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(sel)
                    mask, last_pos, token = mask[sel], last_pos[sel], token[sel]
                    mask = _trim_left(cache, mask)
            requests = admit(self.max_batch_size - len(alive))

    def _decode_step(
        self, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor, token: torch.Tensor
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """One token per running row: returns its logits and the grown cache, mask and positions."""
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_pos = last_pos + 1
        self.profile.decode_steps += 1
        self.profile.decode_rows += mask.shape[0]
        out = self.model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=last_pos,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :], _cache_of(out), mask, last_pos

    def _admit_rows(
        self,
        running: list[_Row],
        new_rows: list[_Row],
        cache: Any,
        mask: torch.Tensor,
        last_pos: torch.Tensor,
        token: torch.Tensor,
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """The running rows' next token and the new rows' uncached prefix tokens, in one batch.

        Usually one forward pass (see `_joint_pass`). In one pass every running row is padded to the
        new rows' fresh width; when that padding would cost more than a pass of its own
        (`admission_padding_limit` padded positions), the running rows take a plain decoding step
        and the new rows a forward pass of their own, and the two batches are joined.
        Returns the logits (running rows first) and the batch's cache, mask and positions.
        """
        reused = [self.prefix_cache.match(r.request.prefix, len(r.request.prefix) - 1) for r in new_rows]
        fresh = max(
            len(r.request.prefix) - self._cached_tokens(b) for r, b in zip(new_rows, reused, strict=True)
        )
        if not running or len(running) * (fresh - 1) <= self.admission_padding_limit:
            return self._joint_pass(running, new_rows, reused, cache, mask, last_pos, token)
        run_logits, cache, mask, last_pos = self._decode_step(cache, mask, last_pos, token)
        empty = mask[:0, :0]
        new_logits, new_cache, new_mask, new_pos = self._joint_pass(
            [], new_rows, reused, None, empty, last_pos[:0], token[:0]
        )
        mask = _join_batches(cache, mask, new_cache, new_mask)
        return torch.cat([run_logits, new_logits]), cache, mask, torch.cat([last_pos, new_pos])

    def _joint_pass(
        self,
        running: list[_Row],
        new_rows: list[_Row],
        reused: list[list[torch.Tensor]],
        cache: Any,
        mask: torch.Tensor,
        last_pos: torch.Tensor,
        token: torch.Tensor,
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """One forward pass: the running rows' last token and the new rows' uncached prefix tokens.

        Layout: a past region [running rows' cache | new rows' cached blocks], each right-aligned,
        then an input region where running rows hold their one token in the last column and new rows
        their fresh prefix tokens right-aligned; gaps are masked and every token has its true
        position. `reused` holds each new row's cached blocks. Returns the last column's logits and
        the compacted cache, mask and positions.
        """
        device = self.device
        cached = [self._cached_tokens(blocks) for blocks in reused]
        fresh = [len(r.request.prefix) - c for r, c in zip(new_rows, cached, strict=True)]
        n_run, n = len(running), len(running) + len(new_rows)
        run_width = mask.shape[1] if running else 0
        past_width = max([run_width, *cached])
        width = max([1 if running else 0, *fresh])

        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        full_mask = torch.zeros((n, past_width + width), dtype=torch.long)
        for k, row in enumerate(new_rows):
            j, c, f = n_run + k, cached[k], fresh[k]
            ids[j, width - f :] = torch.tensor(row.request.prefix[c:], dtype=torch.long)
            positions[j, width - f :] = torch.arange(c, c + f)
            full_mask[j, past_width - c : past_width] = 1
            full_mask[j, past_width + width - f :] = 1
        ids, positions, full_mask = ids.to(device), positions.to(device), full_mask.to(device)
        if running:
            ids[:n_run, -1] = token
            positions[:n_run, -1:] = last_pos + 1
            full_mask[:n_run, past_width - run_width : past_width] = mask
            full_mask[:n_run, -1] = 1
        past: dict[str, Any] = {}
        if past_width:
            past[self._cache_kw] = self._assemble_past(cache if running else None, reused, past_width)
        out = self.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **past,
        )
        self.profile.prefill_passes += 1
        self.profile.prefill_tokens += sum(fresh)
        if running:
            self.profile.decode_steps += 1
            self.profile.decode_rows += n_run
        cache = _cache_of(out)
        return out.logits[:, -1, :], cache, _compact(cache, full_mask), positions[:, -1:]

    def _assemble_past(self, running: Any, reused: list[list[torch.Tensor]], past_width: int) -> Any:
        """A model cache of `past_width` slots: the running rows' cache, then every new row's blocks."""
        layers, _, kv_heads, head_dim = self._kv_shape
        n_run = running.layers[0].keys.shape[0] if running is not None else 0
        dtype = next(self.model.parameters()).dtype
        past = torch.zeros(
            (layers, 2, n_run + len(reused), kv_heads, past_width, head_dim), dtype=dtype, device=self.device
        )
        if running is not None:
            for i, layer in enumerate(running.layers):
                width = layer.keys.shape[2]
                past[i, 0, :n_run, :, past_width - width :] = layer.keys
                past[i, 1, :n_run, :, past_width - width :] = layer.values
        for k, blocks in enumerate(reused):
            start = past_width - self._cached_tokens(blocks)
            for kv in blocks:
                stop = start + kv.shape[3]
                past[:, :, n_run + k, :, start:stop] = kv
                start = stop
        return DynamicCache(ddp_cache_data=[(past[i, 0], past[i, 1]) for i in range(layers)])

    def _cached_tokens(self, blocks: list[torch.Tensor]) -> int:
        return sum(self.prefix_cache.block_tokens(kv) for kv in blocks)

    def _charge(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        setattr(self.profile, phase, getattr(self.profile, phase) + now - since)
        return now

    def _store(self, cache: Any, mask: torch.Tensor, row: int, tokens: tuple[int, ...]) -> None:
        """Put batch row `row` (whose computed tokens are `tokens`) into the prefix cache."""
        block = self.prefix_cache.block_size

        def block_kv(first: int, count: int) -> list[torch.Tensor]:
            # The row's slots in token order (the mask's ones); the cache holds them at those columns.
            slots = mask[row].nonzero().squeeze(1)
            if slots.numel() != len(tokens):
                raise EngineError(f"prefix cache: {slots.numel()} cached slots for {len(tokens)} tokens")
            slots = slots[first * block : (first + count) * block]  # the last block may be shorter
            kv = torch.stack(
                [
                    torch.stack(
                        (layer.keys[row].index_select(1, slots), layer.values[row].index_select(1, slots))
                    )
                    for layer in cache.layers
                ]
            )  # [layers, 2, kv_heads, tokens, head_dim]
            return [part.clone(memory_format=torch.contiguous_format) for part in kv.split(block, dim=3)]

        self.prefix_cache.insert(tokens, block_kv)

    def _draw(
        self, logits: torch.Tensor, temps: torch.Tensor, greedy: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token per row from q; returns (token ids, log p, log q) as device tensors."""
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        logq = torch.log_softmax(logits / temps[:, None], dim=-1)
        cdf = logq.double().exp().cumsum(dim=-1)
        # The first index whose cumulative exceeds u * total; scaling by the total absorbs rounding.
        target = (u * cdf[:, -1]).unsqueeze(1)
        sampled = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)
        token = torch.where(greedy, logits.argmax(dim=-1), sampled)
        lp = logp.gather(1, token[:, None]).squeeze(1)
        lq = torch.where(greedy, torch.zeros_like(lp), logq.gather(1, token[:, None]).squeeze(1))
        return token, lp, lq

    def _hit_stop(self, tokens: list[int], stops: tuple[str, ...], window: int) -> bool:
        # Best effort on the last few tokens only: the sampler re-checks the full text anyway.
        if not stops:
            return False
        tail = self.detokenize(tokens[-window:])
        return any(s and s in tail for s in stops)

    async def close(self) -> None:
        await super().close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["EngineProfile", "TorchEngine"]
