#!/usr/bin/env bash
# Data-parallel transformer training over several machines, one process per GPU, launched by
# torchrun (pip install torch gives it; only its launcher is used: --no-python runs our binary
# with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set). Run this on every node:
#
#   NODE=0 NODES=2 MASTER=node0 bash scripts/train-multinode.sh MODEL_DIR DATA_DIR /shared/runs/dp16
#   NODE=1 NODES=2 MASTER=node0 bash scripts/train-multinode.sh MODEL_DIR DATA_DIR /shared/runs/dp16
#
# The run folder must be on storage every node sees (rank 0 writes it; a resumed run reads it
# on every rank). On one machine, `infinity-train transformer --gpus N …` does the same alone.
# ZERO=1 shards AdamW's state over all the ranks (`--zero 1`).
set -euo pipefail
model=${1:?model folder}; data=${2:?data folder}; out=${3:?run folder (shared)}
gpus=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
exec torchrun --nnodes "${NODES:?}" --nproc-per-node "$gpus" --node-rank "${NODE:?}" \
    --master-addr "${MASTER:?}" --master-port "${PORT:-29500}" --no-python \
    infinity-train transformer --device cuda --model-dir "$model" --data "$data" \
    --batch "${BATCH:-4}" --steps "${STEPS:-10000}" --save-every "${SAVE_EVERY:-500}" --zero "${ZERO:-0}" \
    --out "$out"
