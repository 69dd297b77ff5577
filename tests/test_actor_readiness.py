"""GPU-readiness paths checked on CPU with the real Megatron actor (tests/dist/readiness_worker.py):

- packed layouts (dense rows with a block-diagonal mask; the THD layout with its dense-mask emulation) give
  the padded layout's log-probs, losses and SFT / GRPO / contrast gradients;
- activation recompute (full, selective core_attn) leaves gradients unchanged;
- a NaN in the forward is skipped: weights, Adam state, step count and LR untouched; the next step trains;
  consecutive skips stop; policy ``stop`` raises before the collective;
- DP2 DistributedOptimizer with overlapped grad reduce + param gather == without; a NaN on ONE rank skips
  the step on both; peak memory is the max over ranks.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_actor_dist import _env, _port  # the same worker environment and free-port helper

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests/dist/readiness_worker.py"
TOL = 1e-6


@pytest.fixture(scope="module")
def world1(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("readiness")
    proc = subprocess.run([sys.executable, str(WORKER), "world1", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "readiness_world1.json").read_text())


@pytest.mark.parametrize("mode", ["rows", "thd"])
def test_packed_layouts_match_the_padded_layout(world1, mode):
    got, padded = world1["packing"][mode], world1["packing"]["off_padding"]
    for key in ("logprobs", "sft_grads", "grpo_grads", "contrast_grads", "sft_loss", "grpo_loss", "contrast_loss"):
        assert got[key] < TOL, (mode, key, got)
    for key in ("sft_padding", "grpo_padding", "contrast_padding"):
        assert got[key] <= padded[key], (mode, key, got, padded)
    assert got["sft_padding"] < padded["sft_padding"]  # prompts of 2..5 items: packing removes padding
    if mode == "thd":
        assert got["sft_padding"] == 0.0


@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_activation_recompute_keeps_gradients(world1, granularity):
    got = world1["recompute"][granularity]
    assert got["recompute_granularity"] == granularity
    for key in ("logprobs", "sft_grads", "grpo_grads", "contrast_grads"):
        assert got[key] < TOL, (granularity, key, got)


def test_nan_step_is_skipped_never_written_and_training_continues(world1):
    nan = world1["nan_guard"]
    assert nan["skipped_metrics"]["nonfinite_skipped"] == 1.0 and nan["skipped_metrics"]["skipped_steps_total"] == 1.0
    assert nan["weights_diff_after_skip"] == 0.0 and nan["optimizer_state_diff_after_skip"] == 0.0
    assert nan["step_count_unchanged"] and nan["lr_unchanged"]
    nxt = nan["next_step"]
    assert nxt["nonfinite_skipped"] == 0.0 and nxt["weights_moved"] > 0 and nxt["weights_finite"]
    assert "2 steps in a row" in nan["consecutive_limit"], nan["consecutive_limit"]
    assert "found NaN in local grad norm" in nan["stop_policy"], nan["stop_policy"]  # Megatron's check_for_nan_in_grad
    assert nan["stop_weights_diff"] == 0.0


@pytest.mark.dist
def test_dp2_overlap_equals_plain_and_nan_on_one_rank_skips_everywhere(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _port(), str(WORKER), "dp2", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    res = json.loads((tmp_path / "readiness_dp2.json").read_text())
    assert res["ddp_overlap"] == [True, True]
    assert res["loss_diff"] < TOL and res["weights_diff"] < TOL and res["logprobs_diff"] < TOL, res
    assert res["skipped_on_ranks"] == [1.0, 1.0] and res["weights_diff_after_skip"] == 0.0, res
    assert res["peak_memory_max"][0] == res["peak_memory_max"][1] == max(res["peak_memory_this_rank"]), res
