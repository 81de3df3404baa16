#!/usr/bin/env bash
# One machine, all its GPUs, started by torchrun instead of the built-in launcher.
#   launch/torchrun.sh model=densenet121 data=imagefolder data.root=/data/imagenet amp=O1
# The ranks find RANK/WORLD_SIZE in the environment and do not spawn again. RUN_DIR is pinned so
# they share one run directory (each rank would otherwise resolve ${now:} itself).
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
RUN_DIR=${RUN_DIR:-outputs/torchrun/$(date +%Y-%m-%d_%H-%M-%S)}
exec torchrun --standalone --nproc_per_node="${NPROC:-1}" --no-python \
  launch/rank.sh hydra.run.dir="$RUN_DIR" "$@"
