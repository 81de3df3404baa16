#!/usr/bin/env bash
# The CUDA checks no CPU test can make, and the densenet121 benchmark, in one run (< 8 min on an H100).
#   bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a GPU
# Python packages missing on the machine (hydra-core, omegaconf, antlr4) are installed from .whl/
# when that folder holds wheels. Everything is written under $OUT (default /tmp/gpu_check).
# COMPILE=1 adds a torch.compile benchmark (several more minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
section() { echo; echo "=== $* ($(date +%T))"; }

section machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, hydra; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'hydra', hydra.__version__)"

section "CUDA tests (fp16 O1-O3, loss scaling, native SyncBN + NCCL, memory-efficient, engine)"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15

section "default run on the GPU (embedded digits, amp=O1)"
timeout 120 $PY -m densenet_exp amp=O1 trainer.progress=false hydra.run.dir="$OUT/runs/default_O1" 2>&1 | tail -3
cat "$OUT/runs/default_O1/metrics.json" 2>/dev/null

section "densenet121 224px, batch 64, O0/O1/O2, channels_last, vs torchvision"
timeout 300 $PY benchmarks/bench_train.py --device cuda --model densenet121 --image-size 224 \
  --batch 64 --amp O0 O1 O2 --channels-last --memory-efficient off --steps 10 --warmup 5

section "densenet121 224px, batch 256, O1/O2, channels_last, memory_efficient off/on"
timeout 300 $PY benchmarks/bench_train.py --device cuda --model densenet121 --image-size 224 \
  --batch 256 --amp O1 O2 --channels-last --memory-efficient both --steps 8 --warmup 4

section "input pipeline: JPEG folder, densenet121 224px, batch 256, O1, channels_last, end to end (per image, RAM cache, disk cache, decode=gpu)"
timeout 420 $PY benchmarks/bench_input.py --device cuda --jpeg --jpeg-images 2048 --batch 256 --rounds 1 \
  --amp O1 --channels-last --steps 16 --skip-default --only per-image cache=ram cache=disk decode=gpu \
  2>&1 | grep '^[|#]'
section "slots launcher: 8 jobs of the default model at 3 epochs, 1 and 2 and 4 jobs per GPU (slots.jsonl in \$OUT)"
for k in 1 2 4; do
  start=$(date +%s)
  timeout 300 $PY -m densenet_exp -m hydra/launcher=slots hydra.launcher.jobs_per_gpu=$k \
    act=relu,swish,prelu,gelu 'trainer.seed=range(2)' trainer.epochs=3 trainer.progress=false \
    hydra.sweep.dir="$OUT/slots_$k" > "$OUT/slots_$k.log" 2>&1
  echo "jobs_per_gpu=$k: exit $?, $(( $(date +%s) - start )) s for 8 jobs"
done
if [ "${COMPILE:-0}" = 1 ]; then  # opt-in: compiling two densenet121s takes minutes
  section "densenet121 224px, batch 256, O1, channels_last, torch.compile, vs torchvision"
  timeout 600 $PY benchmarks/bench_train.py --device cuda --model densenet121 --image-size 224 \
    --batch 256 --amp O1 --channels-last --compile --memory-efficient off --steps 8 --warmup 3
fi
section done
