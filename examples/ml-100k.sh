#!/usr/bin/env bash
# MovieLens-100k: fetch (from the recbole wheel on PyPI), prepare once, then GRPO and ReCast with
# identical settings except the signal builder. Extra args go to both runs, e.g. --set rl.steps=50.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DATA_DIR=runs/data/ml-100k-k32
if [ ! -f "$DATA_DIR/meta.json" ]; then
  .venv/bin/recast-data prepare --config examples/ml-100k-recast.yaml --out "$DATA_DIR"
fi
.venv/bin/recast-train --config examples/ml-100k-grpo.yaml "$@"
.venv/bin/recast-train --config examples/ml-100k-recast.yaml "$@"
