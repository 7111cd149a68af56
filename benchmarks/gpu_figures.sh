#!/usr/bin/env bash
# The GPU figures, in one run: plain decoding, block MH and Power-SMC latency, and the race with the
# reference procedure, on the torch engine with a random-weight model of realistic size.
#
#   benchmarks/gpu_figures.sh OUT_DIR TOKENIZER_DIR [ARCH] [SECONDS]
#
# TOKENIZER_DIR holds a Qwen2.5 tokenizer (tokenizer.json, tokenizer_config.json: copy them from the
# prepared default model's folder); ARCH defaults to qwen2.5-7b (see models/random_weights.py); SECONDS
# (default 540) bounds the whole run. Needs only torch, transformers and numpy (a bare GPU image):
# the project runs from this checkout's sources. Each step's output goes to OUT_DIR as it runs; a
# step cut short by the time bound leaves its lines so far.
set -uo pipefail

OUT=${1:?usage: gpu_figures.sh OUT_DIR TOKENIZER_DIR [ARCH] [SECONDS]}
TOKENIZER=${2:?usage: gpu_figures.sh OUT_DIR TOKENIZER_DIR [ARCH] [SECONDS]}
ARCH=${3:-qwen2.5-7b}
BUDGET=${4:-540}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT/service:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
END=$(($(date +%s) + BUDGET))

left() { echo $((END - $(date +%s))); }

step() {  # step NAME SHARE_OF_WHAT_IS_LEFT_PERCENT COMMAND...
    local name=$1 share=$2
    shift 2
    local secs=$(($(left) * share / 100))
    if ((secs < 20)); then
        echo "== $name: skipped, ${secs} s left" | tee -a "$OUT/summary.log"
        return
    fi
    echo "== $name (up to ${secs} s): $*" | tee -a "$OUT/summary.log"
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/summary.log"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/summary.log"

# Seconds-long smoke run on the tiny model: a broken GPU path fails here, not ten minutes in.
step smoke 100 "$PY" "$ROOT/benchmarks/method_latency.py" --model tiny-random --device "$DEVICE" \
    --max-new-tokens 16 --mh-blocks 2 --mh-steps 2 --particles 4 --prompts 1
grep -q "^smc-4" "$OUT/smoke.log" || { echo "smoke run failed" | tee -a "$OUT/summary.log"; exit 1; }

# MH at the paper's N = 10 and T/B = 8 blocks (the paper: 16 blocks of 192 tokens), SMC at 4-32 particles.
step latency 55 "$PY" "$ROOT/benchmarks/method_latency.py" --random-weights "$ARCH" --tokenizer "$TOKENIZER" \
    --device "$DEVICE" --max-new-tokens 128 --mh-blocks 8 --mh-steps 10 --particles 4,8,16,32 --prompts 2 \
    --json "$OUT/latency.json"

# The race at its own settings (alpha 4, N = 2, 64 tokens in blocks of 16), 8 prompts, 8 in flight.
step race 100 "$PY" "$ROOT/benchmarks/reference_race.py" --random-weights "$ARCH" --tokenizer "$TOKENIZER" \
    --device "$DEVICE" --dtype bfloat16 --prompts 8 --concurrency 8 --runs reference,torch-1,torch-all,plain \
    --json "$OUT/race.json"
date -u | tee -a "$OUT/summary.log"
