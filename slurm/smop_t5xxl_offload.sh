#!/bin/bash
# SMoP on a frozen T5-XXL (11B, google/t5-xxl-lm-adapt): ZeRO-3 bf16 with the parameter shards kept in CPU
# memory, 1 node x 4 GPUs. Offload trades speed (every gather crosses PCIe) for GPU memory: it is for few
# GPUs, where the 22 GB bf16 backbone / #GPUs plus activations does not fit (e.g. 4 x 24-40 GB). On 16 GPUs
# the shard is 1.4 GB: copy ds_configs/t5_xxl_zero3_offload_bf16.json without "offload_param" instead.
# Each node needs host RAM for the pinned shards (~22 GB per node, plus the usual).
#   sbatch slurm/smop_t5xxl_offload.sh                          # from the repository root
# Knobs and overriding #SBATCH lines: see slurm/smop_t5xl.sh.
#SBATCH --job-name=smop-t5xxl
#SBATCH --nodes=1                  # EDIT: nodes
#SBATCH --ntasks-per-node=4        # EDIT: ranks per node = GPUs per node
#SBATCH --gpus-per-node=4          # EDIT: GPUs per node
#SBATCH --cpus-per-task=8          # EDIT
#SBATCH --time=48:00:00            # EDIT
#SBATCH --signal=B:USR1@900        # larger: XXL steps are slow, and a step must finish before the save
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out   # EDIT

REPO=${REPO:-$SLURM_SUBMIT_DIR}
PYTHON=${PYTHON:-python}                                     # EDIT
PRESET=${PRESET:-configs/t5_xxl_smop.yaml}
DS_CONFIG=${DS_CONFIG:-ds_configs/t5_xxl_zero3_offload_bf16.json}
OVERRIDES=${OVERRIDES:-}
RUN_NAME=${RUN_NAME:-smop-t5xxl}
OUTPUT_ROOT=${OUTPUT_ROOT:-$REPO/runs}                       # EDIT: on the shared filesystem
OUTPUT_DIR=${OUTPUT_DIR:-$OUTPUT_ROOT/$RUN_NAME-$SLURM_JOB_ID}
REQUEUE_EXIT_CODE=${REQUEUE_EXIT_CODE:-3}

source "$REPO/slurm/launch.sh"
