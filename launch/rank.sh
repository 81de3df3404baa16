#!/usr/bin/env bash
# One rank under an external launcher (torchrun --no-python, srun): every rank runs the Hydra app
# with the same pinned run directory, and only rank 0 lets Hydra write .hydra/ (hydra#2070).
set -euo pipefail
extra=()
if [ "${RANK:-${SLURM_PROCID:-0}}" != "0" ]; then extra+=("hydra.output_subdir=null"); fi
exec "${PYTHON:-python}" -m densenet_exp "$@" "${extra[@]}"
