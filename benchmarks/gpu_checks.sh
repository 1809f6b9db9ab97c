#!/usr/bin/env bash
# Every GPU check of vitlab in one short run, for a machine with one CUDA GPU (about 5 minutes on an H200):
#   1. the CUDA correctness tests (`pytest -m cuda`: GPU vs CPU outputs and gradients, bf16 autocast, channels-last,
#      torch.compile, peft adapters and subspace training, Lightning fits with bf16-mixed);
#   2. the iFormer speed table on the GPU beside its FLOP peers (bf16 autocast, channels-last, batch 128, cuDNN
#      autotuning on): benchmarks/bench_iformer.py --gpu-only;
#   3. ViT-B/16 fine-tuning methods and the iFormer-S step in bf16 (benchmarks/gpu_check.py).
# Usage: bash benchmarks/gpu_checks.sh OUT_DIR   (each step's output goes to OUT_DIR/<step>.txt and .json;
# a step that fails or runs past its time limit is reported and the next one still runs).
set -u
usage="usage: bash benchmarks/gpu_checks.sh OUT_DIR   (PYTHON=... picks the interpreter; default python3)"
case ${1:-} in
    -h|--help) echo "$usage"; exit 0 ;;
    ''|-*) echo "$usage" >&2; echo "gpu_checks.sh: error: pass the folder for the outputs as OUT_DIR" >&2; exit 2 ;;
esac
out=$1
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if ! $python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_checks.sh: error: $python sees no CUDA GPU (torch.cuda.is_available() is False, or torch is missing);" \
        "run it on a machine with one (the CPU tests and benchmarks need no GPU)" >&2
    exit 2
fi
mkdir -p "$out" || exit 2

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local status=$?
    echo "== $name: exit $status in $((SECONDS - start)) s"
    tail -n 40 "$out/$name.txt"
}

{ nvidia-smi -L; $python -c "import torch, timm, peft, lightning; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'timm', timm.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)"; } \
    >"$out/env.txt" 2>&1
cat "$out/env.txt"

step pytest_cuda 200 $python -m pytest -m cuda -q -p no:cacheprovider -rfE tests/*/test_cuda.py \
    tests/augment/test_transforms.py
step bench_iformer_gpu 180 $python benchmarks/bench_iformer.py --gpu-only --dtype bfloat16 --channels-last \
    --batch-size 128 --iters 10 --skip-flops --out "$out/bench_iformer_gpu.json"
step gpu_check 130 $python benchmarks/gpu_check.py --batch 64 --steps 20 --out "$out/gpu_check.json"
