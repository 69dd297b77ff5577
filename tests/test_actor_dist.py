"""Multi-process actor tests on gloo (torchrun): every layout must reproduce the TP1/PP1 reference.

One reference run (world size 1) writes initial weights, constrained log-probs, the gradients of the
SFT / GRPO (ppo_clip) / ReCast (pairwise_contrast) losses and the weights after one optimizer step. Each
layout is ONE torchrun launch that loads the same initial weights and checks all of it, with small
micro-batches (several per step, padded ones included) so the pipeline schedules really interleave.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests/dist/actor_worker.py"
GRAD_TOL = 1e-6  # fp32, absolute
# Adam's first step moves each weight by ~lr*sign(g); tiny grads that differ at 1e-8 can flip it, so the
# weights after a step are compared at 1e-4 (lr = 3e-3).
STEP_TOL = 1e-4

pytestmark = pytest.mark.dist


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(nproc: int, *args: str, log: Path, check: bool = True) -> int:
    """Run the worker under torchrun in its own process group; output goes to ``log``.

    The group is killed afterwards: a worker killed mid-save (the crash test) orphans the multiprocessing
    Manager that dist_checkpointing.save spawned, which would otherwise live on.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", _port(), str(WORKER), *args]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if check and rc != 0:
        raise AssertionError(f"{' '.join(cmd)} failed (rc={rc}):\n{log.read_text()[-6000:]}")
    return rc


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("actor_dist")
    proc = subprocess.run([sys.executable, str(WORKER), "ref", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_reference_trie_logprobs_and_sft(ref_dir):
    ref = json.loads((ref_dir / "ref.json").read_text())
    assert ref["trie_logprob_max_diff"] < 1e-5  # actor.logprobs == plain-torch masked log-softmax
    losses = ref["sft_losses"]
    assert losses[-1] < 0.5 * losses[0], losses  # a short SFT run lowers the loss
    # after recomputing old log-probs with the actor the first PPO ratio is 1 (to float rounding) and nothing clips
    assert abs(ref["first_step_ratio_mean"] - 1.0) < 1e-6 and ref["first_step_clipfrac"] == 0.0, ref


def _check_layout(result: dict, *, grads: bool = True) -> None:
    assert result["logprobs"] < GRAD_TOL, result
    for key in ("sft_sums", "grpo_sums", "contrast_sums"):
        assert result[key] < GRAD_TOL, (key, result)
    if grads:
        for key in ("sft_grads", "grpo_grads", "contrast_grads"):
            assert result[key] < GRAD_TOL, (key, result[key + "_worst"], result)
    assert result["weights_after_step"] < STEP_TOL, result
    assert result["weights_after_rl_step"] < STEP_TOL, result  # fresh RL optimizer (use_optimizer) on every layout
    # the frozen reference: built from local shards, equal to the actor bitwise, the same at every layout,
    # unchanged by two optimizer steps of the actor
    assert result["ref_minus_actor"] == 0.0 and result["ref_after_updates"] == 0.0, result
    assert result["ref_logprobs"] < GRAD_TOL, result
    assert result["micro_batches"] >= 2
    # streamed weight export (weight sync): same tensors as mcore_to_hf of the gathered model, bit for bit
    assert result["export_keys_match"] and result["export_max_diff"] == 0.0 and result["export_disk_max_diff"] == 0.0, result
    assert result["export_shards"] >= 2, result


@pytest.mark.parametrize("layout,nproc", [("pp2vpp2", 2), ("tp2pp2", 4), ("dp2", 2)])
def test_layout_matches_tp1(ref_dir, layout, nproc):
    _torchrun(nproc, "layout", layout, str(ref_dir), log=ref_dir / f"{layout}.log")
    result = json.loads((ref_dir / f"layout_{layout}.json").read_text())
    _check_layout(result, grads=layout != "dp2")  # dp2 runs the DistributedOptimizer: grads are DP shards
    if layout == "dp2":  # DistributedOptimizer checkpoint: the step after a reload repeats exactly
        assert result["resume_weights_diff"] == 0.0, result
    if layout == "pp2vpp2":  # virtual-stage checkpoint save -> load is exact
        assert result["ckpt_reload_max_diff"] == 0.0 and result["ckpt_trainer_state"] == {"k": 1}


def test_tp2_matches_checkpoint_roundtrip_kill_and_resume_at_tp1(ref_dir):
    rc = _torchrun(2, "layout", "tp2", str(ref_dir), log=ref_dir / "tp2.log", check=False)  # ends killed mid-save
    assert rc != 0 and "CKPT_FLOW_REACHED_KILL" in (ref_dir / "tp2.log").read_text()
    _check_layout(json.loads((ref_dir / "layout_tp2.json").read_text()))
    ckpt = json.loads((ref_dir / "ckpt.json").read_text())
    assert ckpt["reload_max_diff"] == 0.0  # save -> load is exact
    assert ckpt["step3_loss"] == ckpt["step3_loss_after_reload"]
    assert ckpt["trainer_state"] == {"rl_step": 2, "note": "after two steps"}
    root = ref_dir / "ckpts"
    assert (root / "latest").read_text().strip() == "step_2"  # the crash left the previous checkpoint current
    assert not (root / "step_3").exists()

    proc = subprocess.run([sys.executable, str(WORKER), "resume", str(ref_dir)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resume = json.loads((ref_dir / "resume.json").read_text())
    assert resume["trainer_state"] == {"rl_step": 2, "note": "after two steps"}
    assert resume["load_max_diff"] == 0.0  # the TP2 checkpoint loads at TP1 exactly
    assert resume["step3_loss_diff"] < GRAD_TOL  # and the resumed run continues the same run
    assert resume["step3_weights_max_diff"] < STEP_TOL
