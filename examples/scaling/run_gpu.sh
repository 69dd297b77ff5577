#!/usr/bin/env bash
# Model-size scaling on GPUs: import Qwen3-<SIZE> from its Hugging Face checkpoint, then train the GRPO and the
# ReCast arm (identical but for signal.builder). Run on every node (as examples/launch/torchrun_multinode.sh).
#
#   HF_DIR=/models/Qwen3-0.6B bash examples/scaling/run_gpu.sh 0.6b
#   NNODES=2 RDZV_ENDPOINT=node0:29500 HF_DIR=/models/Qwen3-8B bash examples/scaling/run_gpu.sh 8b --set rl.steps=200
#
# HF_DIR   the Hugging Face model directory (config.json, *.safetensors, tokenizer files); default hf/Qwen3-<SIZE>
# Extra args go to both arms. Steps that are done (prepared data, import) are skipped on a rerun; the arms resume.
set -euo pipefail
SIZE=${1:?usage: run_gpu.sh 0.6b|1.7b|8b [--set key=value ...]}
shift
cd "$(dirname "$0")/../.."
CONFIG=examples/scaling/qwen3-$SIZE.yaml
[ -f "$CONFIG" ] || { echo "no $CONFIG (sizes: 0.6b 1.7b 8b)" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
HF_DIR=${HF_DIR:-hf/Qwen3-${SIZE^^}}
NNODES=${NNODES:-1}
read -r DATA TP PP SEQ DTYPE < <("$PY" -c "import sys; from recast_mcore.config.base import load_config; from recast_mcore.config.run import RunConfig
c = load_config(RunConfig, sys.argv[1]); p = c.parallel
print(c.data.prepared_dir, p.tensor_parallel, p.pipeline_parallel, c.model.max_seq_len, c.model.params_dtype)" "$CONFIG")
IMPORT=runs/import/qwen3-$SIZE
if [ ! -f "$DATA/meta.json" ]; then
  .venv/bin/recast-data prepare --config "$CONFIG" --out "$DATA"
fi
if [ ! -f "$IMPORT/import.json" ]; then  # one node, TP*PP processes; every rank streams only its own slices
  IMPORT_CMD=("$PY" -m torch.distributed.run --standalone --nproc-per-node $((TP * PP)) tools/convert_checkpoint.py
              from-hf --hf "$HF_DIR" --dataset "$DATA" --out "$IMPORT" --tp "$TP" --pp "$PP" --max-seq-len "$SEQ"
              --params-dtype "$DTYPE")
  if [ "$NNODES" != 1 ]; then
    echo "import first, on one node with $((TP * PP)) GPUs (shared filesystem): ${IMPORT_CMD[*]}" >&2
    exit 2
  fi
  "${IMPORT_CMD[@]}"
fi
for ARM in grpo recast; do
  bash examples/launch/torchrun_multinode.sh "$CONFIG" --set signal.builder=$ARM \
    --set run_dir=runs/scaling/qwen3-$SIZE-$ARM "$@"
done
