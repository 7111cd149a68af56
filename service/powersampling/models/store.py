"""The model store: prepared Hugging Face folders under the cache directory, built once per model.

The first use of a known name assembles the GGUF from the installed package data, checks its pinned
sha256, dequantises it once with transformers into a bfloat16 safetensors folder under the cache
directory, and later uses reuse that folder:

    prepared = resolve_model("qwen2.5-coder-0.5b-instruct")   # PreparedModel(name, path, fingerprint)

The cache directory is ``$POWERSAMPLING_CACHE_DIR`` (default ``~/.cache/powersampling/models``); each
model lives in ``<cache>/<name>``. A folder is written under a temporary name and renamed into place
when complete, so an interrupted preparation never leaves a half folder behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from powersampling.errors import EngineError, InvalidArgument, UnknownModel
from powersampling.models.fingerprints import MANIFEST_NAME, fingerprint_folder
from powersampling.models.gguf import assemble_gguf, convert_gguf, locate_parts
from powersampling.models.registry import KNOWN_MODELS, KnownModel, known_model
from powersampling.models.tiny import (
    HEAD_DIM_32,
    TINY_BUILD_MARKER,
    TINY_MODEL_NAME,
    save_tiny_model,
    tiny_build_id,
)


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A model ready to load: a Hugging Face folder on disk and the fingerprint of its weights."""

    name: str
    path: Path
    fingerprint: str


def models_cache_dir() -> Path:
    """The folder holding prepared models: $POWERSAMPLING_CACHE_DIR or ~/.cache/powersampling/models."""
    env = os.environ.get("POWERSAMPLING_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "powersampling" / "models"


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
    spec = known_model(model)
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
                convert_gguf(spec, gguf_dir, gguf_name, out, progress=progress)
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
    build = tiny_build_id(**HEAD_DIM_32)

    def current() -> bool:
        # A copy built from another recipe (an older template, say) is rebuilt, not served.
        marker = final / TINY_BUILD_MARKER
        return (final / "config.json").is_file() and marker.is_file() and marker.read_text().strip() == build

    if current():
        return final
    with _locked(root / f".{TINY_MODEL_NAME}.lock"):
        if current():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_NAME}.tmp-", dir=root))
        try:
            save_tiny_model(work, **HEAD_DIM_32)
            (work / TINY_BUILD_MARKER).write_text(build + "\n")
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
