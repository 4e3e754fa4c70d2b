#!/usr/bin/env bash
# tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [ARGS...]
# Train on a Slurm cluster: srun starts one task per GPU (GPUS tasks in
# all, GPUS_PER_NODE on each node) and every task runs tools/train.py with
# --launcher slurm; MMEngine reads its rank and the first node's address
# from Slurm's variables. Settings by environment, as in MMPretrain:
#   GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5): the allocation;
#   SRUN_ARGS: more srun options (e.g. "--time=2:00:00 --qos=normal");
#   PORT: the rendezvous port (MASTER_PORT; MMEngine's default 29500),
#         set it when two jobs may share a node.
# WORK_DIR (and few_shot_cfg.feature_dir) must be on a filesystem all
# nodes see: rank 0 writes the stored features, the others read them.
# See docs/distributed.md.
set -e
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [ARGS...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
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
    python -u "$TOOLS/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher=slurm "${@:5}"
