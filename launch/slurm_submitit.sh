#!/usr/bin/env bash
# SLURM through Hydra's submitit launcher (pip install -e ".[sweep]"): one task per node, and on each
# node the built-in elastic launcher starts one rank per GPU. dist.rdzv_endpoint=slurm picks the
# job's first node as rendezvous host and the SLURM job id as rendezvous id.
#   launch/slurm_submitit.sh model=densenet121 data=imagefolder data.root=/data/imagenet amp=O1
# Sweeps work the same way: add -m and comma-separated values; each job gets its own allocation.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-2}
GPUS=${GPUS:-8}
exec python -m densenet_exp -m hydra/launcher=submitit_slurm \
  hydra.launcher.nodes="$NODES" hydra.launcher.tasks_per_node=1 \
  hydra.launcher.gpus_per_node="$GPUS" hydra.launcher.cpus_per_task=$((GPUS * 8)) \
  hydra.launcher.timeout_min="${TIMEOUT_MIN:-1440}" ${PARTITION:+hydra.launcher.partition=$PARTITION} \
  dist.nnodes="$NODES" dist.nproc_per_node="$GPUS" dist.rdzv_endpoint=slurm \
  trainer.resume=auto "$@"
