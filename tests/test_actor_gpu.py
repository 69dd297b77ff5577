"""GPU-only actor tests (Transformer Engine spec, bf16, FP8, THD packing, NCCL); skipped without CUDA (conftest).

NOT run in this project so far: no GPU machine was available (docs/actor.md "What ran on a GPU").
tools/gpu_smoke.sh runs this file plus the bench and the SGLang CUDA check in one go.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


@pytest.fixture
def tmp_path(tmp_path):
    """Worker outputs go to $RECAST_GPU_RESULTS when set (tools/gpu_smoke.sh collects them), else pytest's tmp dir."""
    keep = os.environ.get("RECAST_GPU_RESULTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path


def _run(tmp_path: Path, *args: str, nproc: int = 0) -> dict | None:
    script = ROOT / "tests/dist" / args[0]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), str(script), *args[1:]]
    else:
        cmd = [sys.executable, str(script), *args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    if args[0] == "gpu_worker.py":
        return json.loads((tmp_path / f"gpu_{args[1]}.json").read_text())
    return None


def test_te_spec_matches_local_spec(tmp_path):
    pytest.importorskip("transformer_engine")
    result = _run(tmp_path, "gpu_worker.py", "te_vs_local", str(tmp_path))
    assert result["backend"] == "nccl"
    assert result["logprob_max_diff"] < 1e-4, result
    assert result["logits_max_diff"] < 1e-3, result
    assert any("layer_norm_weight" in n for n in result["te_param_names"])  # really the TE spec


def test_bf16_sft_lowers_loss_and_reports_mfu_and_memory(tmp_path):
    result = _run(tmp_path, "gpu_worker.py", "bf16", str(tmp_path))
    assert result["losses"][-1] < 0.7 * result["losses"][0], result
    assert result["logprobs_finite"] and result["peak_memory_bytes"] > 0
    assert result["peak_reserved_bytes"] >= result["peak_memory_bytes"], result
    from recast_mcore.actor.instrument import device_model

    if device_model(result["device"]) is not None:  # a known GPU: MFU is reported and plausible
        assert result["mfu"] is not None and 0 < result["mfu"] < 1, result


def test_fp8_hybrid_sft_runs(tmp_path):
    pytest.importorskip("transformer_engine")
    result = _run(tmp_path, "gpu_worker.py", "fp8", str(tmp_path))
    assert all(map(lambda x: x == x and abs(x) < 1e4, result["losses"])), result  # finite
    assert result["losses"][-1] < result["losses"][0], result


def test_fp8_tensorwise_and_delayed_recipes_take_a_finite_step(tmp_path):
    pytest.importorskip("transformer_engine")
    result = _run(tmp_path, "gpu_worker.py", "fp8_recipes", str(tmp_path))
    for recipe in ("tensorwise", "delayed"):
        r = result[recipe]
        assert r["ok"], (recipe, r)
        assert r["losses"][0] == r["losses"][0] and r["grad_norm"] == r["grad_norm"], (recipe, r)  # not NaN


def test_thd_packing_and_te_recompute_match_padded(tmp_path):
    pytest.importorskip("transformer_engine")
    result = _run(tmp_path, "gpu_worker.py", "te_layouts", str(tmp_path))
    assert result["thd_layout"] == ["thd", True], result  # cu_seqlens really went to TE
    # bf16: the layouts differ by rounding only (GEMM shapes/order differ)
    assert result["thd_logprob_max_diff"] < 5e-2 and result["recompute_logprob_max_diff"] < 5e-2, result
    for key in ("thd_sft_grad_rel", "thd_policy_grad_rel", "recompute_sft_grad_rel", "recompute_policy_grad_rel"):
        assert result[key] < 5e-2, (key, result)


@pytest.mark.dist
def test_nccl_tp2_matches_tp1(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    _run(tmp_path, "actor_worker.py", "ref", str(tmp_path))
    _run(tmp_path, "actor_worker.py", "layout", "tp2only", str(tmp_path), nproc=2)
    result = json.loads((tmp_path / "layout_tp2only.json").read_text())
    assert result["logprobs"] < 1e-5 and result["grpo_grads"] < 1e-5 and result["sft_grads"] < 1e-5, result


def test_reference_offload_on_gpu(tmp_path):
    """The KL reference with offload: pinned host weights between uses, the same log-probs as kept on device."""
    _run(tmp_path, "gpu_worker.py", "reference_offload", str(tmp_path))
    result = json.loads((tmp_path / "gpu_reference_offload.json").read_text())
    assert result["offloaded_on_host"] and result["back_on_host"], result
    assert result["logprob_max_diff"] < 1e-5, result  # same weights, same kernels
    assert result["device_bytes_saved"] >= 0.9 * result["param_bytes"], result
