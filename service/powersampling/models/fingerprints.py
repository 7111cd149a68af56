"""Model fingerprints: the hash of a model's identity (weights, config, tokenizer) in every cache key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from powersampling.errors import InvalidArgument

# Files written by this module inside a model folder; they are not part of the model's identity.
MANIFEST_NAME = "powersampling.json"
FINGERPRINT_SIDECAR = ".powersampling-fingerprint.json"

# What identifies a model: its weights, its config and its tokenizer (token ids go into cache keys).
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt", ".gguf", ".tiktoken")
READ_CHUNK_BYTES = 8 << 20  # files are hashed and copied in pieces of this size


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
        while block := f.read(READ_CHUNK_BYTES):
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
