#!/usr/bin/env bash
# GPU smoke run for the first GPU session: one command, one JSON, under 8 minutes on one H200.
#
#   bash tools/gpu_smoke.sh [OUT_DIR]            # default OUT_DIR=runs/gpu_smoke; PYTHON=... to pick the interpreter
#   bash tools/gpu_smoke.sh --cpu-dry-run [OUT]  # plumbing check without a GPU (tiny CPU stand-ins, see below)
#
# Sections (each runs even when an earlier one failed; a failure is printed loudly with its log tail):
#   env         versions of python/torch/CUDA/TE/megatron-core/sglang, the GPU, TF32 flags
#   gpu_tests   pytest tests/test_actor_gpu.py: TE vs local spec logits + log-probs, bf16 SFT with MFU and peak
#               memory, FP8 hybrid SFT, one FP8 step each with the tensorwise and delayed recipes, THD packing
#               (cu_seqlens) and TE selective recompute vs padded; the workers' JSON lands in OUT_DIR
#   bench       tools/bench_actor_update.py on CUDA in bf16 (Qwen3-0.6B shape, 50-item histories, THD packing):
#               MFU, tokens/s and peak allocated/reserved memory for G = 8, 16, 32, 64
#   rollout     tools/gpu_smoke_rollout.py: a CUDA SGLang server with the trie logit processor samples only
#               catalog items (log-probs == fp32 reference) and its full-width beam search == exhaustive ranking
# Result: OUT_DIR/gpu_smoke.json = {sections: {name: {ok, rc, seconds, log}}, env, gpu_*, bench, rollout}.
# Exit code: 0 when every section passed, 1 otherwise (the JSON is written either way).
# --cpu-dry-run runs the same plumbing on CPU: gpu_tests collects and skips, the bf16 worker runs on CPU,
# the bench runs its tiny default fp32 model at G=8, the rollout check uses the CPU SGLang server.
set -u -o pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then DRY=1; shift; fi
OUT=${1:-runs/gpu_smoke}
PY=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUDA_DEVICE_MAX_CONNECTIONS=1 RECAST_GPU_RESULTS="$OUT"
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
SECTIONS_FILE="$OUT/sections.tsv"
: > "$SECTIONS_FILE"
FAILED=()

if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False); use --cpu-dry-run to check the plumbing" >&2
  exit 2
fi

# run_section NAME TIMEOUT_S CMD...: run with a timeout, log to OUT/NAME.log, record rc and seconds.
run_section() {
  local name=$1 limit=$2
  shift 2
  local start end rc
  start=$(date +%s)
  echo "=== [$name] (limit ${limit}s) $*"
  timeout --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((end - start))" >> "$SECTIONS_FILE"
  if [ "$rc" -eq 0 ]; then
    echo "    ok in $((end - start))s"
  else
    FAILED+=("$name")
    echo "!!! [$name] FAILED rc=$rc after $((end - start))s$([ "$rc" -eq 124 ] && echo ' (timed out)') - last lines of $OUT/$name.log:" >&2
    tail -n 25 "$OUT/$name.log" | sed 's/^/!!!   /' >&2
  fi
}

run_section env 60 "$PY" - <<'PY'
import json, os, platform, importlib
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(),
                memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
for mod in ("transformer_engine", "megatron.core", "sglang", "transformers", "flashinfer"):
    try:
        info[mod] = getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:
        info[mod] = f"missing: {type(exc).__name__}"
from recast_mcore.actor.instrument import device_model
info["peak_table_row"] = device_model(info.get("gpu", ""))
open(os.path.join(os.environ["RECAST_GPU_RESULTS"], "env.json"), "w").write(json.dumps(info, indent=1))
print(json.dumps(info, indent=1))
PY

if [ "$DRY" = 0 ]; then
  run_section gpu_tests 330 "$PY" -m pytest tests/test_actor_gpu.py -q -m gpu -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml"
  run_section bench 200 "$PY" tools/bench_actor_update.py --model examples/models/qwen3-0.6b.yaml --params-dtype bf16 \
    --packing thd --history 50 --prompts 8 --group-sizes 8,16,32,64 --repeats 3 --warmup 1 --json "$OUT/bench.json"
else
  run_section gpu_tests 120 "$PY" -m pytest tests/test_actor_gpu.py -q -m gpu -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml"
  run_section gpu_worker_bf16 300 "$PY" tests/dist/gpu_worker.py bf16 "$OUT"
  run_section bench 300 "$PY" tools/bench_actor_update.py --group-sizes 8 --prompts 4 --repeats 1 --warmup 0 --json "$OUT/bench.json"
fi
run_section rollout 240 "$PY" tools/gpu_smoke_rollout.py --out "$OUT"

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
result = {"sections": {}}
for line in (out / "sections.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    result["sections"][name] = {"ok": rc == "0", "rc": int(rc), "seconds": int(seconds), "log": f"{name}.log"}
for path in sorted(out.glob("*.json")):
    if path.name != "gpu_smoke.json":
        result[path.stem] = json.loads(path.read_text())
(out / "gpu_smoke.json").write_text(json.dumps(result, indent=1))
print(f"wrote {out / 'gpu_smoke.json'}")
PY

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_smoke.sh: FAILED sections: ${FAILED[*]} (details in $OUT/<section>.log and $OUT/gpu_smoke.json)" >&2
  exit 1
fi
echo "gpu_smoke.sh: all sections passed ($OUT/gpu_smoke.json)"
