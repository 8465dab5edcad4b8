#!/bin/bash
# SMoP on a frozen T5-large (770M, google/t5-large-lm-adapt): ZeRO-3 bf16 on 1 node x 4 GPUs.
#   sbatch slurm/smop_t5large.sh                                # from the repository root
# The bf16 backbone (1.5 GB) fits on any GPU: DS_CONFIG=ds_configs/zero2_bf16.json replicates it instead
# of sharding it (no gathers; measure both). Knobs and overriding #SBATCH lines: see slurm/smop_t5xl.sh.
#SBATCH --job-name=smop-t5large
#SBATCH --nodes=1                  # EDIT: nodes
#SBATCH --ntasks-per-node=4        # EDIT: ranks per node = GPUs per node
#SBATCH --gpus-per-node=4          # EDIT: GPUs per node
#SBATCH --cpus-per-task=8          # EDIT
#SBATCH --time=12:00:00            # EDIT
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out   # EDIT

REPO=${REPO:-$SLURM_SUBMIT_DIR}
PYTHON=${PYTHON:-python}                                     # EDIT
PRESET=${PRESET:-configs/t5_large_smop.yaml}
DS_CONFIG=${DS_CONFIG:-ds_configs/t5_large_zero3_bf16.json}
OVERRIDES=${OVERRIDES:-}
RUN_NAME=${RUN_NAME:-smop-t5large}
OUTPUT_ROOT=${OUTPUT_ROOT:-$REPO/runs}                       # EDIT: on the shared filesystem
OUTPUT_DIR=${OUTPUT_DIR:-$OUTPUT_ROOT/$RUN_NAME-$SLURM_JOB_ID}
REQUEUE_EXIT_CODE=${REQUEUE_EXIT_CODE:-3}

source "$REPO/slurm/launch.sh"
