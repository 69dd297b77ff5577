#!/usr/bin/env bash
# Multi-node recast-train with plain torchrun and c10d rendezvous. Run the SAME command on every node.
#
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0.example:29500 \
#     bash examples/launch/torchrun_multinode.sh examples/qwen3-1.7b.yaml --set run_dir=/shared/runs/q17
#
# NNODES            number of nodes (default 1)
# NPROC_PER_NODE    processes (GPUs) per node (default: all visible GPUs, else 1)
# RDZV_ENDPOINT     host:port of the rendezvous (any node reachable by all; default localhost:29500)
# RDZV_ID           job id shared by all nodes (default: recast-$USER)
# PYTHON            the interpreter that has the project installed (default: `python` on PATH, e.g. inside
#                   the docker/Dockerfile.gpu image or an activated environment; no .venv is assumed)
# The world size NNODES*NPROC_PER_NODE must be a multiple of parallel.tensor_parallel*parallel.pipeline_parallel;
# recast-train checks it before building anything. Rollout (SGLang) runs on global rank 0's node.
#
# Shared filesystem: every node must see the SAME run_dir (checkpoints are written shard-wise by all ranks
# and `latest` by rank 0; resume reads them on every rank) and data.prepared_dir (read by every rank).
# Weight sync method `disk` also needs the export directory under run_dir on rank 0's node only. Nothing
# else is shared: the code and the environment must simply be identical on all nodes.
set -euo pipefail
CONFIG=${1:?usage: torchrun_multinode.sh CONFIG.yaml [--set key=value ...]}
shift
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || { echo "torchrun_multinode.sh: interpreter '$PY' not found; set PYTHON=/path/to/python" >&2; exit 2; }
NNODES=${NNODES:-1}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500}
RDZV_ID=${RDZV_ID:-recast-${USER:-job}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
# One CUDA work queue per device: Megatron's tensor/sequence-parallel communication overlap relies on the
# order in which kernels are issued (megatron/core/tensor_parallel/layers.py).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
exec "$PY" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
  --max-restarts 0 \
  -m recast_mcore.trainer.cli --config "$CONFIG" "$@"
