#!/bin/bash
# SMoP on a frozen T5-XL (3B, google/t5-xl-lm-adapt): ZeRO-3 bf16, 2 nodes x 4 GPUs (40-80 GB each).
#   sbatch slurm/smop_t5xl.sh                                   # from the repository root
#   OVERRIDES="train.lr=0.5 data.task=cb" RUN_NAME=xl-cb sbatch --nodes=4 slurm/smop_t5xl.sh
# Every knob below is VAR=${VAR:-default}: set it in the environment of sbatch (exported by default).
# #SBATCH lines are not variable-expanded: change nodes/GPUs on the sbatch command line, which overrides
# them (keep --ntasks-per-node equal to --gpus-per-node: one rank per GPU). See slurm/README.md.
#SBATCH --job-name=smop-t5xl
#SBATCH --nodes=2                  # EDIT: nodes
#SBATCH --ntasks-per-node=4        # EDIT: ranks per node = GPUs per node
#SBATCH --gpus-per-node=4          # EDIT: GPUs per node (a CPU-only smoke test: --gpus-per-node=0)
#SBATCH --cpus-per-task=8          # EDIT: data loading + OMP threads per rank
#SBATCH --time=24:00:00            # EDIT: wall time; the pre-emption signal comes 600 s before it
#SBATCH --signal=B:USR1@600        # B: signal only the batch shell, which forwards it to the ranks
#SBATCH --requeue                  # let the job go back to the queue after a checkpointed stop
#SBATCH --open-mode=append         # a requeued run appends to the same log
#SBATCH --output=slurm-%x-%j.out   # EDIT: log file (%x job name, %j job id); its directory must exist

REPO=${REPO:-$SLURM_SUBMIT_DIR}                           # the checkout (submit from its root)
PYTHON=${PYTHON:-python}                                  # EDIT: the environment's python
PRESET=${PRESET:-configs/t5_xl_smop.yaml}                 # run preset (model, data, batch, lr)
DS_CONFIG=${DS_CONFIG:-ds_configs/t5_xl_zero3_bf16.json}  # ZeRO stage, precision (ds_configs/README.md)
OVERRIDES=${OVERRIDES:-}                                  # extra dotted overrides, space-separated
RUN_NAME=${RUN_NAME:-smop-t5xl}
OUTPUT_ROOT=${OUTPUT_ROOT:-$REPO/runs}                    # EDIT: on the shared filesystem
OUTPUT_DIR=${OUTPUT_DIR:-$OUTPUT_ROOT/$RUN_NAME-$SLURM_JOB_ID}   # set it to an old run's dir to resume it
REQUEUE_EXIT_CODE=${REQUEUE_EXIT_CODE:-3}                 # trainer exit code meaning "saved, requeue me"

source "$REPO/slurm/launch.sh"
