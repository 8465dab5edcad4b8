# slurm/launch.sh -- the one launch line shared by every slurm/*.sh template. Sourced, not run:
# a template sets its knobs (PRESET, DS_CONFIG, OVERRIDES, OUTPUT_DIR, ...) and ends with
#   source "$REPO/slurm/launch.sh"
# so rank discovery, the good-practice environment and pre-emption handling exist once.
#
# Rank discovery: srun starts one task per GPU and each task exports the torch.distributed variables
# from Slurm's (DeepSpeed never reads SLURM_*; without RANK/WORLD_SIZE it would try MPI discovery).
# The alternative, one launcher per node, is in slurm/README.md.
#
# Pre-emption contract with the trainer (trainer/main.py, checkpoint issue): on SIGUSR1 or SIGTERM every
# rank stops at the same step, saves output_dir/checkpoints, and exits with REQUEUE_EXIT_CODE; re-running
# the same command with the same output_dir resumes from output_dir/checkpoints/latest.

: "${REPO:?set by the template}" "${PRESET:?}" "${DS_CONFIG:?}" "${OUTPUT_DIR:?}"
PYTHON=${PYTHON:-python}
REQUEUE_EXIT_CODE=${REQUEUE_EXIT_CODE:-3}   # the trainer's "stopped by a signal, checkpoint saved" code

cd "$REPO" || exit 1
mkdir -p "$OUTPUT_DIR"

# --- rank discovery: rank 0 of the step runs on the first node of the allocation ----------------------
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
# A port per job, so two jobs sharing a node do not collide; a requeued job keeps its id, hence its port.
MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

# --- good practice on a cluster ------------------------------------------------------------------------
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1   # a dead rank fails the NCCL collective instead of hanging forever
export DEEPSPEED_TIMEOUT=${DEEPSPEED_TIMEOUT:-60}   # minutes; DeepSpeed's default for groups it creates
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # compute nodes read the shared cache, never the network
export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}   # must be on the shared filesystem
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

echo "[$(date -Is)] job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NTASKS} ranks on" \
     "${SLURM_JOB_NUM_NODES} node(s) ($SLURM_JOB_NODELIST), master ${MASTER_ADDR}:${MASTER_PORT}," \
     "output ${OUTPUT_DIR}"

# Each task maps Slurm's ids to torch.distributed's, runs the trainer, and turns the requeue exit code
# into a marker file plus exit 0: with --kill-on-bad-exit=1 a first rank exiting 3 would get the others
# killed, and srun would report 143, not 3 (measured on Slurm 22.05).
# Slurm signals every process of the step, this wrapper too: a bash with no trap dies of USR1 at once
# (srun then reports "User defined signal 1" while the trainer is still saving); with a trap it waits for
# the trainer, which gets the signal itself (handlers are not inherited across exec).
REQUEUE_MARKER="$OUTPUT_DIR/.requeue-${SLURM_JOB_ID}"
rm -f "$REQUEUE_MARKER"
# The number of tasks on node $2 (SLURM_NODEID) of a step, from Slurm's compressed per-node list $1
# (SLURM_STEP_TASKS_PER_NODE: "2(x2)" is 2 on each of 2 nodes, "2,1" is 2 then 1). SLURM_NTASKS_PER_NODE is
# only the request: with --nodes=2 --ntasks=3 it is unset (and ntasks / nodes = 1 is wrong on node 0), and
# with a template's --ntasks-per-node=4 it says 4 on every node. Exported so each task's bash has it.
tasks_on_node() {
    local n=$2 item count times
    local IFS=,
    for item in $1; do
        count=${item%%(*}; times=1
        [[ $item == *"(x"* ]] && { times=${item#*(x}; times=${times%)}; }
        if ((n < times)); then echo "$count"; return; fi
        n=$((n - times))
    done
    return 1
}
export -f tasks_on_node
TASK='trap : USR1 TERM
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
export LOCAL_WORLD_SIZE=$(tasks_on_node "$SLURM_STEP_TASKS_PER_NODE" "$SLURM_NODEID")
"$@"; rc=$?
if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ]; then touch "$REQUEUE_MARKER"; exit 0; fi
exit "$rc"'
export REQUEUE_EXIT_CODE REQUEUE_MARKER

# The launch line: the same entry point as a local run, one task per GPU, in the background so that the
# batch shell can take signals while the step runs (bash runs a trap only once a foreground command ends).
set -f   # OVERRIDES is split on whitespace below; no glob expansion of e.g. data.data_dir=/x/*
srun --kill-on-bad-exit=1 --ntasks="$SLURM_NTASKS" bash -c "$TASK" task \
    "$PYTHON" trainer/main.py --config "$PRESET" ds_config="$DS_CONFIG" output_dir="$OUTPUT_DIR" $OVERRIDES &
srun_pid=$!

# Slurm signals only the batch shell with --signal=B:USR1@N; srun forwards what it receives to every task.
interrupted=0
forward() {
    interrupted=1
    echo "[$(date -Is)] batch shell got SIG$1: forwarding it to the training step"
    kill -s "$1" "$srun_pid" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

rc=
while :; do
    interrupted=0
    wait "$srun_pid"; status=$?
    # A second wait after srun was already collected answers 127: keep the status we had.
    if [ "$status" -eq 127 ] && [ -n "$rc" ]; then break; fi
    rc=$status
    # wait returns >128 when a trapped signal interrupts it; srun is still running then.
    if [ "$rc" -le 128 ] || [ "$interrupted" -eq 0 ]; then break; fi
done
[ -e "$REQUEUE_MARKER" ] && rc=$REQUEUE_EXIT_CODE && rm -f "$REQUEUE_MARKER"

if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ]; then
    echo "[$(date -Is)] trainer saved a checkpoint and asked to be requeued (exit $rc): scontrol requeue"
    trap 'exit 0' TERM   # requeueing sends the batch shell SIGTERM; nothing is left to forward it to
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "scontrol requeue failed: resume by hand with OUTPUT_DIR=$OUTPUT_DIR and the same command" >&2
fi
echo "[$(date -Is)] training step finished with exit code $rc"
exit "$rc"
