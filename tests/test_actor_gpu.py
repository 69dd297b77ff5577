"""GPU-only actor tests (Transformer Engine spec, bf16, FP8, NCCL); skipped without CUDA (conftest)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


def _run(tmp_path: Path, *args: str, nproc: int = 0) -> None:
    script = ROOT / "tests/dist" / args[0]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), str(script), *args[1:]]
    else:
        cmd = [sys.executable, str(script), *args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_te_spec_matches_local_spec(tmp_path):
    pytest.importorskip("transformer_engine")
    _run(tmp_path, "gpu_worker.py", "te_vs_local", str(tmp_path))
    result = json.loads((tmp_path / "gpu_te_vs_local.json").read_text())
    assert result["backend"] == "nccl"
    assert result["logprob_max_diff"] < 1e-4, result
    assert any("layer_norm_weight" in n for n in result["te_param_names"])  # really the TE spec


def test_bf16_sft_lowers_loss_and_reports_mfu(tmp_path):
    _run(tmp_path, "gpu_worker.py", "bf16", str(tmp_path))
    result = json.loads((tmp_path / "gpu_bf16.json").read_text())
    assert result["losses"][-1] < 0.7 * result["losses"][0], result
    assert result["logprobs_finite"] and result["peak_memory_bytes"] > 0


def test_fp8_hybrid_sft_runs(tmp_path):
    pytest.importorskip("transformer_engine")
    _run(tmp_path, "gpu_worker.py", "fp8", str(tmp_path))
    result = json.loads((tmp_path / "gpu_fp8.json").read_text())
    assert all(map(lambda x: x == x and abs(x) < 1e4, result["losses"])), result  # finite
    assert result["losses"][-1] < result["losses"][0], result


@pytest.mark.dist
def test_nccl_tp2_matches_tp1(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    _run(tmp_path, "actor_worker.py", "ref", str(tmp_path))
    _run(tmp_path, "actor_worker.py", "layout", "tp2only", str(tmp_path), nproc=2)
    result = json.loads((tmp_path / "layout_tp2only.json").read_text())
    assert result["logprobs"] < 1e-5 and result["grpo_grads"] < 1e-5 and result["sft_grads"] < 1e-5, result
