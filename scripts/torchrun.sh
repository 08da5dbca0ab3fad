#!/bin/bash
# Multi-node training without SLURM: run this on every node with the same MASTER_ADDR/PORT and its
# own NODE_RANK. Example, 2 nodes x 8 GPUs:
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh configs/data/text.yaml --config configs/arch/va.yaml
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh configs/data/text.yaml --config configs/arch/va.yaml
# Without InfiniBand prepend NCCL_IB_DISABLE=1 (and NCCL_SOCKET_IFNAME=<iface> if needed).
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun.sh CONFIG.yaml [lit-vattn args]}; shift
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m lit_vattn fit \
  --config "$CONFIG" --config configs/trainer/multinode.yaml \
  --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC" "$@"
