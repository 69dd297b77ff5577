#!/usr/bin/env bash
# CPU model-size ladder: sizes s, m, l (examples/scaling/cpu-*.yaml) x arms GRPO and ReCast (identical but
# for signal.builder), one after another; a rerun resumes unfinished runs. SEEDS="7 8 9" repeats each with
# those seeds (run dirs get a -seed<N> suffix). Extra args go to every run, e.g. --set rl.steps=20.
#   bash examples/scaling/run_cpu_ladder.sh
#   SIZES="s m" SEEDS="7 8" bash examples/scaling/run_cpu_ladder.sh --set rl.steps=20
# The study tool (issue 15) runs the same configs as studies with matched-budget reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SIZES=${SIZES:-s m l}
SEEDS=${SEEDS:-7}
if [ ! -f runs/data/quickstart/meta.json ]; then
  .venv/bin/recast-data prepare --config examples/scaling/cpu-s.yaml --out runs/data/quickstart
fi
for SIZE in $SIZES; do
  for SEED in $SEEDS; do
    for ARM in grpo recast; do
      .venv/bin/recast-train --config examples/scaling/cpu-$SIZE.yaml --set signal.builder=$ARM --set seed=$SEED \
        --set run_dir=runs/scaling/cpu-$SIZE-$ARM-seed$SEED "$@"
    done
  done
done
