#!/bin/bash
# A sweep as a job array: one array task per (task, number of prompts, seed), each a full multi-GPU run.
#   sbatch slurm/sweep_array.sh                                  # from the repository root
#   TASKS="rte cb" NUM_PROMPTS="4" SEEDS="1 2 3" sbatch --array=0-5 slurm/sweep_array.sh
# The --array range must be 0..(#TASKS x #NUM_PROMPTS x #SEEDS - 1): the script refuses a mismatch.
# "%4" runs at most 4 array tasks at once. Knobs and overriding #SBATCH lines: see slurm/smop_t5xl.sh.
#SBATCH --job-name=smop-sweep
#SBATCH --array=0-17%4             # EDIT: 3 tasks x 2 prompt counts x 3 seeds = 18
#SBATCH --nodes=1                  # EDIT: nodes per run
#SBATCH --ntasks-per-node=4        # EDIT: ranks per node = GPUs per node
#SBATCH --gpus-per-node=4          # EDIT: GPUs per node
#SBATCH --cpus-per-task=8          # EDIT
#SBATCH --time=12:00:00            # EDIT
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out   # EDIT (%A array job id, %a array index)

TASKS=${TASKS:-"rte cb boolq"}          # EDIT: SuperGLUE tasks (data.task)
NUM_PROMPTS=${NUM_PROMPTS:-"4 8"}       # EDIT: values of prompt.num_prompts
SEEDS=${SEEDS:-"1 2 3"}                 # EDIT: values of seed

read -r -a tasks <<<"$TASKS"; read -r -a ks <<<"$NUM_PROMPTS"; read -r -a seeds <<<"$SEEDS"
total=$(( ${#tasks[@]} * ${#ks[@]} * ${#seeds[@]} ))
if [ "${SLURM_ARRAY_TASK_COUNT:-0}" -ne "$total" ]; then
    echo "the array has ${SLURM_ARRAY_TASK_COUNT:-no} tasks but TASKS x NUM_PROMPTS x SEEDS has $total:" \
         "submit with --array=0-$((total - 1))" >&2
    exit 2
fi
i=${SLURM_ARRAY_TASK_ID}
seed=${seeds[i % ${#seeds[@]}]}; i=$(( i / ${#seeds[@]} ))
k=${ks[i % ${#ks[@]}]};          i=$(( i / ${#ks[@]} ))
task=${tasks[i]}

REPO=${REPO:-$SLURM_SUBMIT_DIR}
PYTHON=${PYTHON:-python}                                     # EDIT
PRESET=${PRESET:-configs/t5_large_smop.yaml}                 # EDIT: the model size of the sweep
DS_CONFIG=${DS_CONFIG:-ds_configs/t5_large_zero3_bf16.json}
OVERRIDES="data.task=$task prompt.num_prompts=$k seed=$seed ${OVERRIDES:-}"
RUN_NAME=${RUN_NAME:-smop-sweep}
OUTPUT_ROOT=${OUTPUT_ROOT:-$REPO/runs}                       # EDIT: on the shared filesystem
# One directory per sweep, one sub-directory per point; a requeued array task keeps its directory.
OUTPUT_DIR=${OUTPUT_DIR:-$OUTPUT_ROOT/$RUN_NAME-$SLURM_ARRAY_JOB_ID/$task-k$k-seed$seed}
REQUEUE_EXIT_CODE=${REQUEUE_EXIT_CODE:-3}

source "$REPO/slurm/launch.sh"
