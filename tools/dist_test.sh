#!/usr/bin/env bash
# tools/dist_test.sh CONFIG NUM_PROCS [CHECKPOINT] [ARGS...]
# One process per GPU (NCCL); without a GPU, NUM_PROCS CPU processes (gloo).
# CHECKPOINT is optional (training-free configs fit their head here).
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, as in MMPretrain
# (docs/distributed.md).
set -e
CONFIG=$1
NPROCS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
shift 2
CHECKPOINT=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    # A path, not an option: it must come before --launcher for test.py.
    CHECKPOINT=("$1")
    shift
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROCS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" "${CHECKPOINT[@]}" \
    --launcher pytorch "$@"
