#!/usr/bin/env bash
# Every GPU figure the README asks for, in one call of at most about 9 minutes (each figure has its own
# time limit; one that fails or runs out leaves the others standing):
#
#     bash benchmarks/gpu.sh [OUT_DIR]
#
# Uses VITSLIM_PYTHON (default python3). If that Python lacks vitslim, installs it without touching its
# torch: first the wheels in <repo>/.whl, then this checkout (editable, no dependencies). For an offline
# GPU machine whose Python has torch, timm, typer, rich and pluggy but not torch-pruning or
# segment-anything, fetch those into the repo first (`.whl/` is git-ignored, so name it in the device
# tool's `carry`):
#
#     pip download --no-deps -d .whl torch-pruning==1.6.1 segment-anything==1.0
#
# Writes one JSON file per figure into OUT_DIR (default: $OUT, else <repo>/gpu-results) and log.txt.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${OUT:-$repo/gpu-results}}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
py="${VITSLIM_PYTHON:-python3}"
if ! "$py" -c "import vitslim" 2>/dev/null; then
    if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps "$repo"/.whl/*.whl >"$out/install.log" 2>&1
    fi
    "$py" -m pip install -q --no-deps --no-build-isolation -e "$repo" >>"$out/install.log" 2>&1
    "$py" -c "import vitslim, segment_anything, torch_pruning" || { cat "$out/install.log"; exit 1; }
fi
cd "$repo/benchmarks"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
run() {  # NAME SECONDS COMMAND...: one figure, its time limit, its JSON in $out/NAME.json
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" | tee -a "$out/log.txt"
    timeout "$limit" "$py" "$@" --json "$out/$name.json" >>"$out/log.txt" 2>&1 || echo "   failed or timed out ($?)" | tee -a "$out/log.txt"
}
echo "== GPU tests" | tee -a "$out/log.txt"
timeout 60 "$py" -m pytest -q "$repo/tests/test_fast.py" -k gpu -p no:cacheprovider >"$out/gpu_tests.txt" 2>&1
tail -n 1 "$out/gpu_tests.txt" | tee -a "$out/log.txt"
run sam_bf16_b1 110 latency.py sam-b sam-b@0.77 sam-b@0.77:heads --fast --kernel flex --dtype bf16 --rounds 3 --runs 17
run sam_bf16_b1_graphs 60 latency.py sam-b sam-b@0.77 sam-b@0.77:heads --fast --dtype bf16 --rounds 3 --runs 17 --cuda-graphs
run sam_bf16_b8 60 latency.py sam-b sam-b@0.77 --fast --dtype bf16 --batch 8 --rounds 3 --runs 7
run sam_fp32_b1 60 latency.py sam-b sam-b@0.77 sam-b@0.77/8 --fast --rounds 3 --runs 10
run timm_bf16 40 latency.py timm:vit_base_patch16_224 timm:vit_base_patch16_224@0.5 --fast --dtype bf16 --batch 8 --rounds 3 --runs 17
run attention_global 60 attention.py sam-b@0.77 --block 2 --kernels sdpa chunked flex --dtype bf16 --runs 50
run distill 80 distill_throughput.py --model sam-b --img-size 1024 --images 16 --batch-size 4 --device cuda
ls -l "$out"
