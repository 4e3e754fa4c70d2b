#!/usr/bin/env bash
# tools/slurm_test.sh PARTITION JOB_NAME CONFIG [CHECKPOINT] [ARGS...]
# Evaluate on a Slurm cluster: one srun task per GPU, each running
# tools/test.py with --launcher slurm. CHECKPOINT is optional: a
# training-free config (Tip-Adapter, zero-shot, ...) fits its head on the
# few-shot set; a trained one takes e.g. <work_dir>/final_searched.pth.
# Settings by environment, as in MMPretrain: GPUS (8), GPUS_PER_NODE (8),
# CPUS_PER_TASK (5), SRUN_ARGS (more srun options), PORT (MASTER_PORT).
# The work dir (--work-dir, default work_dirs/<config name>) and the
# feature store must be on a filesystem all nodes see.
# See docs/distributed.md.
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG [CHECKPOINT] [ARGS...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
CHECKPOINT=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    CHECKPOINT=("$1")  # a path, not an option
    shift
fi
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
TOOLS="$(cd "$(dirname "$0")" && pwd)"
if [ -n "$PORT" ]; then
    export MASTER_PORT=$PORT
fi

# SRUN_ARGS is left unquoted on purpose: it holds several options.
PYTHONPATH="$TOOLS/..":$PYTHONPATH \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    python -u "$TOOLS/test.py" "$CONFIG" "${CHECKPOINT[@]}" \
    --launcher=slurm "$@"
