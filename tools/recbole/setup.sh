#!/usr/bin/env bash
# The RecBole (SASRec reference) environment: tools/recbole/.venv, separate from the project's .venv
# (RecBole 1.2.1 needs numpy < 2; the project runs numpy 2). Idempotent: reinstalls only when the lock changes.
#   bash tools/recbole/setup.sh          # ~1-2 minutes (torch 2.13.0 CPU wheel + ~35 small packages)
# Then: tools/recbole/.venv/bin/python tools/recbole/run_sasrec.py --prepared DIR --out DIR
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.recbole-installed
want=$(cat requirements.lock | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[recbole setup] creating tools/recbole/$VENV with $($PY --version)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# --no-deps everywhere: the lock is complete (torch==2.13.0 is the CPU wheel; never let pip pick another torch).
"$VENV/bin/python" -m pip install -q --no-deps -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps recbole==1.2.1
"$VENV/bin/python" -c "import recbole, torch, numpy; print('[recbole setup] recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
echo "$want" > "$STAMP"
