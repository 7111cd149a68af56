"""The transformers reference engine: padded batches, KV cache, exact float32 log p and log q.

Every `extend_batch` runs its requests as ONE left-padded batch: a prefill over the prefixes, then
incremental decoding with the model's KV cache, one token per row and step. Rows leave the batch
(and the cache) as soon as they end, by EOS, by their own `max_new_tokens`, by a stop string or
because their caller went away.

Per row and step, log p = log_softmax(logits) and log q = log_softmax(logits / temperature) come from
the same logits cast to float32, whatever the model's dtype. A token is drawn from q by inverse CDF
over the float64 cumulative of exp(log q), with one uniform per step taken from a generator seeded by
the row's seed alone, so a row's tokens do not depend on what else shares the batch. There is no
top-k, top-p or repetition penalty: the Metropolis-Hastings ratio needs q exactly as reported.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from powersampling.engines.base import BatchingEngine, ChatMessage, EngineInfo, ExtendRequest, Extension
from powersampling.engines.hf_tokenizer import chat_template_ids, template_supports_tools
from powersampling.errors import EngineError, EngineOverloaded, InvalidArgument
from powersampling.models import fingerprint_folder, fingerprint_state_dict

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_EMPTY = Extension(token_ids=(), logp=(), logq=(), ended_by_eos=False)


def _resolve_device(device: str | torch.device) -> torch.device:
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


def _as_int_list(value: Any) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [int(v) for v in values if isinstance(v, int) and v >= 0]


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class TorchEngine(BatchingEngine):
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
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InvalidArgument("model_dir", f"{path} is not a model folder (no config.json)")
        resolved_device = _resolve_device(device)
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
    ) -> TorchEngine:
        """An engine on an already built model and tokenizer (e.g. a tiny random model in tests).

        The model stays on its current device unless `device` is given; the fingerprint defaults to
        a hash of the config and state dict.
        """
        engine = cls.__new__(cls)
        resolved = _resolve_device(device) if device is not None else next(model.parameters()).device
        engine._setup(
            model,
            tokenizer,
            name=name,
            fingerprint=fingerprint or fingerprint_state_dict(model),
            device=resolved,
            max_batch_size=max_batch_size,
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
    ) -> None:
        BatchingEngine.__init__(self, max_batch_size=max_batch_size)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        # The worker thread decodes (stop strings) while the event loop's thread may encode prompts; a
        # Rust tokenizer whose settings get touched from two threads at once raises "Already borrowed".
        self._tokenizer_lock = threading.Lock()
        self.device = device
        text_config = model.config.get_text_config()
        output = model.get_output_embeddings()
        # The logits' width is the model's vocabulary (it may exceed the tokenizer's, padded for speed):
        # p is defined over all of it, so sampling and ids accepted in prefixes use it too.
        self._vocab_size = int(output.weight.shape[0]) if output is not None else int(text_config.vocab_size)
        eos: list[int] = []
        generation_config = getattr(model, "generation_config", None)
        for value in (
            getattr(generation_config, "eos_token_id", None),
            getattr(text_config, "eos_token_id", None),
            tokenizer.eos_token_id,
        ):
            eos.extend(i for i in _as_int_list(value) if i not in eos and i < self._vocab_size)
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
        self._tokenizer_len = len(tokenizer)
        param = next(model.parameters())
        self._info = EngineInfo(
            engine="torch",
            model=name,
            fingerprint=fingerprint,
            max_context_tokens=self._max_context,
            eos_token_ids=self._eos,
            device=str(device),
            extra={"dtype": str(param.dtype).removeprefix("torch."), "architecture": type(model).__name__},
        )

    # ------------------------------------------------------------------ tokenizer side

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        """Token ids of raw text, with the special tokens the tokenizer adds by default (Gemma's BOS)."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped (ids past the tokenizer's table decode to nothing)."""
        ids = [int(t) for t in token_ids if 0 <= int(t) < self._tokenizer_len]
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def supports_tools(self) -> bool:
        return template_supports_tools(self.tokenizer)

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()
    ) -> list[int]:
        """Token ids of `messages` with the model's chat template, the assistant turn opened."""
        with self._tokenizer_lock:
            return chat_template_ids(self.tokenizer, messages, tools, model_name=self._info.model)

    # ------------------------------------------------------------------ generation

    async def extend(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        # Validate here, in the caller's task, so a bad request fails its caller and not the whole batch.
        self.check_requests(requests)
        return await super().extend(requests)

    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        """Extend all `requests` as one padded batch; results in the order of `requests`."""
        self.check_requests(requests)
        results: list[Extension] = [_EMPTY] * len(requests)
        rows = [i for i, r in enumerate(requests) if r.max_new_tokens > 0 and not self.is_cancelled(i)]
        if not rows:
            return results
        try:
            with torch.inference_mode():
                for i, ext in self._generate(requests, rows).items():
                    results[i] = ext
        except torch.OutOfMemoryError as exc:
            raise EngineOverloaded(f"out of memory on {self.device} for a batch of {len(rows)}") from exc
        return results

    def _generate(self, requests: Sequence[ExtendRequest], rows: list[int]) -> dict[int, Extension]:
        device = self.device
        reqs = [requests[i] for i in rows]
        n = len(rows)
        # Never run past the context window: a row gets at most the room its prefix leaves.
        budgets = [min(r.max_new_tokens, self._max_context - len(r.prefix)) for r in reqs]
        steps = max(budgets)

        # One uniform per step per row, drawn up front from the row's seed alone (PCG64): no
        # generator calls or host syncs inside the loop, and batch composition cannot matter.
        uniforms = np.zeros((n, steps), dtype=np.float64)
        for j, (r, b) in enumerate(zip(reqs, budgets, strict=True)):
            uniforms[j, :b] = np.random.default_rng(r.seed % (1 << 64)).random(b)
        u_all = torch.from_numpy(uniforms).to(device)
        temps = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in reqs], device=device)
        greedy = torch.tensor([r.temperature == 0 for r in reqs], device=device)

        # Left padding so every row's last prefix token sits in the final column.
        lengths = [len(r.prefix) for r in reqs]
        width = max(lengths)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for j, r in enumerate(reqs):
            ids[j, width - lengths[j] :] = torch.tensor(r.prefix, dtype=torch.long)
            mask[j, width - lengths[j] :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)

        logp_buf = torch.zeros((n, steps), dtype=torch.float32, device=device)
        logq_buf = torch.zeros((n, steps), dtype=torch.float32, device=device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        ended_by_eos = [False] * n
        stop_window = [2 * max(len(s) for s in r.stop) + 8 if r.stop else 0 for r in reqs]

        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = _cache_of(out)
        logits = out.logits[:, -1, :]
        alive = list(range(n))  # batch position -> index into reqs
        alive_t = torch.arange(n, device=device)
        last_pos = positions[:, -1:]
        step = 0
        while True:
            token, lp, lq = self._draw(logits, temps[alive_t], greedy[alive_t], u_all[alive_t, step])
            logp_buf[alive_t, step] = lp
            logq_buf[alive_t, step] = lq
            token_host = token.tolist()  # the one host sync per step
            step += 1
            keep: list[int] = []
            for b, j in enumerate(alive):
                t = token_host[b]
                tokens[j].append(t)
                if t in self._eos:
                    ended_by_eos[j] = True
                elif (
                    len(tokens[j]) < budgets[j]
                    and not self.is_cancelled(rows[j])
                    and not self._hit_stop(tokens[j], reqs[j].stop, stop_window[j])
                ):
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(alive):
                # Drop finished rows from the batch and the KV cache: they cost nothing from now on.
                sel = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(sel)
                mask, last_pos, token, alive_t = mask[sel], last_pos[sel], token[sel], alive_t[sel]
                alive = [alive[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=last_pos,
                use_cache=True,
                **{self._cache_kw: cache},
            )
            cache = _cache_of(out)
            logits = out.logits[:, -1, :]

        logp_host = logp_buf.cpu()
        logq_host = logq_buf.cpu()
        if not bool(torch.isfinite(logp_host).all()):
            raise EngineError(f"model {self._info.model!r} produced non-finite logits")
        results: dict[int, Extension] = {}
        for j, i in enumerate(rows):
            if self.is_cancelled(i):
                continue  # its caller is gone: the result would be thrown away
            k = len(tokens[j])
            results[i] = Extension(
                token_ids=tuple(tokens[j]),
                logp=tuple(logp_host[j, :k].tolist()),
                logq=tuple(logq_host[j, :k].tolist()),
                ended_by_eos=ended_by_eos[j],
            )
        return results

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


__all__ = ["TorchEngine"]
