#!/usr/bin/env bash
# tools/dist_train.sh CONFIG NUM_PROCS [ARGS...]
# One process per GPU (NCCL); without a GPU, NUM_PROCS CPU processes (gloo).
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, as in MMPretrain
# (docs/distributed.md).
set -e
CONFIG=$1
NPROCS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROCS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
