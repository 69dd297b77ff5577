#!/usr/bin/env bash
# The README's main job: embedded synthetic data -> SFT -> ReCast RL -> beam-search evaluation,
# a few minutes on 2 CPU cores. Prepares the data if missing, then runs recast-train.
#   bash examples/quickstart.sh                       # or: make quickstart
#   bash examples/quickstart.sh --set rl.steps=10     # extra args go to recast-train
# Re-running resumes the run in runs/quickstart (delete that directory to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-examples/quickstart.yaml}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run 'make setup' (tools/setup_env.sh) first" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DATA_DIR=$("$PY" -c "import sys; from recast_mcore.config.base import load_config; from recast_mcore.config.run import RunConfig; print(load_config(RunConfig, sys.argv[1]).data.prepared_dir)" "$CONFIG")
if [ ! -f "$DATA_DIR/meta.json" ]; then
  echo "[quickstart] preparing the synthetic dataset into $DATA_DIR"
  .venv/bin/recast-data prepare --config "$CONFIG" --out "$DATA_DIR"
fi
exec .venv/bin/recast-train --config "$CONFIG" "$@"
