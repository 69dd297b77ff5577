#!/usr/bin/env bash
# Multi-node recast-train with plain torchrun and c10d rendezvous. Run the SAME command on every node.
#
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0.example:29500 \
#     bash examples/launch/torchrun_multinode.sh examples/qwen3-1.7b.yaml --set run_dir=runs/q17
#
# NNODES            number of nodes (default 1)
# NPROC_PER_NODE    processes (GPUs) per node (default: all visible GPUs, else 1)
# RDZV_ENDPOINT     host:port of the rendezvous (any node reachable by all; default localhost:29500)
# RDZV_ID           job id shared by all nodes (default: recast-$USER)
# The world size NNODES*NPROC_PER_NODE must be a multiple of parallel.tensor_parallel*parallel.pipeline_parallel;
# recast-train checks it before building anything. Rollout (SGLang) runs on global rank 0's node.
set -euo pipefail
CONFIG=${1:?usage: torchrun_multinode.sh CONFIG.yaml [--set key=value ...]}
shift
cd "$(dirname "$0")/../.."
NNODES=${NNODES:-1}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500}
RDZV_ID=${RDZV_ID:-recast-${USER:-job}}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
exec "$PY" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
  --max-restarts 0 \
  -m recast_mcore.trainer.cli --config "$CONFIG" "$@"
