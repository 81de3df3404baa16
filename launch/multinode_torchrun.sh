#!/usr/bin/env bash
# Several machines with torchrun: run this on every node with the same MASTER and JOB_ID.
#   MASTER=node0:29400 NNODES=2 JOB_ID=exp42 RUN_DIR=/shared/runs/exp42 launch/multinode_torchrun.sh amp=O1
# RUN_DIR should be on a shared file system; global rank 0 writes it.
# Without torchrun, the same thing: on every node
#   python -m densenet_exp dist.nnodes=2 dist.nproc_per_node=auto dist.rdzv_endpoint=node0:29400
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MASTER:?set MASTER=host:port of the rendezvous (reachable from every node)}"
NNODES=${NNODES:-2}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
JOB_ID=${JOB_ID:-densenet_exp}
RUN_DIR=${RUN_DIR:-outputs/multinode/$JOB_ID}
exec torchrun --nnodes="$NNODES" --nproc_per_node="${NPROC:-1}" --rdzv_backend=c10d \
  --rdzv_endpoint="$MASTER" --rdzv_id="$JOB_ID" --no-python \
  launch/rank.sh hydra.run.dir="$RUN_DIR" "$@"
