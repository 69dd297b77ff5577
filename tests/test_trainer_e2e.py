"""End-to-end recast-train runs (SFT -> RL -> eval) on a tiny model and tiny synthetic data, in-process
torch rollout engine; resume-after-kill reproduces the uninterrupted run's metrics exactly.

Every run is a subprocess (Megatron keeps process-wide state; a kill must be a real process exit).
Total ~2 minutes on 2 cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 4

TINY = {
    "seed": 3,
    "data": {
        "dataset": "synthetic", "kcore": 3, "max_history": 6,
        "synthetic": {"num_users": 120, "num_items": 40, "num_clusters": 4, "mean_history": 8},
        "semantic_ids": {"levels": 2, "codes_per_level": 8, "embedding_dim": 8, "kmeans_iters": 10},
    },
    "model": {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 2,
              "num_query_groups": 1, "max_seq_len": 32},
    "optim": {"lr": 0.003},
    "rollout": {"engine": "torch", "sampling": {"group_size": 4}},
    "sft": {"max_steps": 4, "batch_size": 32, "save_every": 2, "log_every": 1},
    # RL with its own optimizer, a KL reference and 2 mini-batches per step (old log-probs recomputed)
    "rl": {"steps": STEPS, "prompts_per_step": 8, "eval_every": 2, "ppo_mini_batch_size": 4,
           "optim": {"lr": 0.002, "warmup_steps": 0, "decay_style": "cosine", "decay_steps": STEPS, "min_lr": 0.0005}},
    "eval": {"ks": [1, 5], "beam_width": 5, "max_users": 24, "batch_size": 24},
    "checkpoint": {"save_interval": 2, "keep_last": 0},
    "signal": {"builder": "recast", "kl": {"use_kl": True, "coef": 0.05}},
    "logging": {"progress_bar": False},
}

# A driver that SIGKILLs the job's whole process group (the trainer and the helper processes that
# dist_checkpointing spawns, as a scheduler would) on the n-th call of a function.
KILL_DRIVER = """
import os, signal, sys
from recast_mcore.actor import actor as actor_mod, checkpointing

def killer(orig, n):
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return orig(*args, **kwargs)
    return wrapped

if __name__ == "__main__":
    where, n = sys.argv[1], int(sys.argv[2])
    if where == "mid_save":  # after the tensors are written into .<name>.tmp, before the rename
        checkpointing._rng_state = killer(checkpointing._rng_state, n)
    elif where == "mid_update":
        actor_mod.MegatronActor.update = killer(actor_mod.MegatronActor.update, n)
    from recast_mcore.trainer.cli import main
    sys.exit(main(sys.argv[3:]))
"""

VOLATILE = ("time", "seconds", "tflops", "memory", "per_second")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def prepare_workdir(root: Path) -> Path:
    """``root/data``: the tiny prepared dataset (session fixture ``e2e_workdir`` in conftest.py)."""
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"data": TINY["data"]}))
    from recast_mcore.data.cli import main as data_main

    assert data_main(["prepare", "--config", str(data_yaml), "--out", str(root / "data")]) == 0
    return root


def train_reference_run(workdir: Path) -> Path:
    """The uninterrupted ReCast run every resume is compared with (session fixture ``e2e_recast_run``)."""
    proc = _train(_config(workdir, "recast"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "recast"


@pytest.fixture(scope="module")
def workdir(e2e_workdir):
    return e2e_workdir


def _config(workdir: Path, name: str, **sections) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["prepared_dir"] = str(workdir / "data")
    cfg["run_dir"] = str(workdir / name)
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, *extra: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    if kill is None:
        cmd = [sys.executable, "-m", "recast_mcore.trainer.cli", "--config", str(config), *extra]
    else:
        driver = config.parent / "kill_driver.py"
        driver.write_text(KILL_DRIVER)
        cmd = [sys.executable, str(driver), kill[0], str(kill[1]), "--config", str(config), *extra]
    # own session: the kill hits only this job's process group
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, start_new_session=True)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not any(word in k for word in VOLATILE)} for r in records]


@pytest.fixture(scope="module")
def recast_run(e2e_recast_run):
    return e2e_recast_run


def _check_run_dir(run_dir: Path, group_size: int, prompts: int) -> list[dict]:
    records = _records(run_dir)
    stages = [(r["stage"], r.get("at_stage"), r["step"]) for r in records]
    assert [s for s in stages if s[0] == "sft"] == [("sft", None, i) for i in range(1, 5)]
    assert [s for s in stages if s[0] == "rl"] == [("rl", None, i) for i in range(1, STEPS + 1)]
    assert [s for s in stages if s[0] == "eval"] == [("eval", "sft", 4), ("eval", "rl", 2), ("eval", "rl", 4)]
    rl = [r for r in records if r["stage"] == "rl"]
    # every sampled candidate counts, and the budget is cumulative
    assert [r["rollouts"] for r in rl] == [prompts * group_size] * STEPS
    assert [r["rollout_budget"] for r in rl] == [prompts * group_size * i for i in range(1, STEPS + 1)]
    for r in rl:
        for key in ("reward_mean", "hit_rate", "all_zero_group_frac", "update_width", "actor_time_s"):
            assert r[key] is not None and r[key] >= 0
    evals = [r for r in records if r["stage"] == "eval"]
    for r in evals:
        assert 0 <= r["pass@1"] <= r["pass@5"] <= 1 and r["num_users"] == 24
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"rl_step_{STEPS:06d}"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"rl_reward_mean_vs_budget.png", "rl_hit_rate_vs_step.png", "rl_all_zero_group_frac_vs_budget.png",
            "rl_update_width_vs_step.png", "rl_actor_time_s_vs_budget.png", "eval_vs_budget.png", "sft_loss.png"} <= plots
    return rl


def test_recast_end_to_end(recast_run):
    rl = _check_run_dir(recast_run, group_size=4, prompts=8)
    # ReCast sends at most 1 positive (sampled or repaired anchor) + 1 hardest negative per prompt
    assert all(0 < r["update_width"] <= 2 for r in rl)
    assert all(r["actor/loss"] is not None for r in rl)
    # 8 prompts in mini-batches of 4: two optimizer steps per RL step, old log-probs recomputed (auto), KL > 0
    # once the actor moved, learning rate from rl.optim (cosine 0.002 -> 0.0005 over the RL steps)
    assert [r["actor/optimizer_steps"] for r in rl] == [2.0] * STEPS
    assert all(r["actor/old_logprobs_recomputed"] == 1.0 and r["actor/kl_ref_mean"] > 0 for r in rl)
    assert rl[0]["actor/lr"] < 0.002 and rl[-1]["actor/lr"] == pytest.approx(0.0005)


def test_grpo_end_to_end(workdir):
    proc = _train(_config(workdir, "grpo", signal={"builder": "grpo"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rl = _check_run_dir(workdir / "grpo", group_size=4, prompts=8)
    assert all(r["signal/num_pairs"] == 0 for r in rl)


def test_resume_after_kills_reproduces_uninterrupted_run(workdir, recast_run):
    config = _config(workdir, "killed")
    run_dir = workdir / "killed"
    # 1) killed in the middle of the 3rd save (rl_step_2): its tensors are on disk but never renamed
    proc = _train(config, kill=("mid_save", 3))
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "sft_step_000004"
    assert (run_dir / "checkpoints" / ".rl_step_000002.tmp").is_dir()
    # 2) resumed from sft_step_4, killed inside the 6th actor update = RL step 3's second mini-batch, after
    #    its first optimizer step moved the weights (two per step: test_recast_end_to_end checks it)
    proc = _train(config, kill=("mid_update", 6))
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert "resume from" in proc.stdout + proc.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "rl_step_000002"
    # 3) resumed from rl_step_2 (RL optimizer state, reference policy, mini-batch order), runs to the end
    proc = _train(config)
    assert "reference policy loaded from" in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _stable(_records(run_dir)) == _stable(_records(recast_run))


def test_recast_eval_cli_matches_the_runs_last_eval(workdir, recast_run):
    out = workdir / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "recast_mcore.eval.cli", "--config", str(workdir / "recast.yaml"), "--out", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    last_eval = [r for r in _records(recast_run) if r["stage"] == "eval"][-1]
    assert result["checkpoint"].endswith(f"rl_step_{STEPS:06d}")
    for key in ("pass@1", "recall@5", "ndcg@5"):
        assert result[key] == pytest.approx(last_eval[key], abs=1e-9)


@pytest.mark.dist
@pytest.mark.sglang
def test_two_ranks_with_sglang_rollout(workdir):
    """torchrun, 2 ranks (DP=2): rank 0 launches SGLang and rolls out, ReCast anchors are scored by both ranks
    (collective actor.logprobs), the UpdateBatch is broadcast over the control plane, the initial model is
    exported as shards and every update streams to the server through its weight-update group (distributed
    sync, gloo), with the colocated release/resume calls around each update."""
    config = _config(workdir, "dp2_sglang", rollout={
        "engine": "sglang", "sampling": {"group_size": 4},
        "sglang": {"max_total_tokens": 2048, "omp_threads": 1, "log_dir": str(workdir / "sglang_logs")},
        "weight_sync": {"method": "distributed", "bucket_mb": 0.01},
        "placement": {"mode": "colocated", "release_memory": True},
    })
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recast_mcore.trainer.cli", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rl = _check_run_dir(workdir / "dp2_sglang", group_size=4, prompts=8)
    assert [r["policy_version"] for r in rl] == [2, 3, 4, 5]  # 1 = after SFT, then one per update


def test_rl_stage_starts_from_an_sft_checkpoint(workdir, recast_run):
    """Either stage can start from a checkpoint: RL only, weights from the recast run's SFT checkpoint."""
    init = recast_run / "checkpoints" / "sft_step_000004"
    config = _config(workdir, "rl_only", sft={"enabled": False}, rl={"steps": 2, "init_checkpoint": str(init)})
    proc = _train(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized weights from" in proc.stdout + proc.stderr
    records = _records(workdir / "rl_only")
    assert [r["stage"] for r in records if r["stage"] != "eval"] == ["rl", "rl"]
    first = [r for r in records if r["stage"] == "rl"][0]
    reference = [r for r in _records(recast_run) if r["stage"] == "rl"][0]
    # same weights and same step-1 seeds: the first rollout is the recast run's first rollout
    assert first["reward_mean"] == reference["reward_mean"] and first["rollouts"] == reference["rollouts"]


@pytest.mark.parametrize("arm", ["grpo_gt", "more_sft"])  # recast update=advantages: unit tests (test_signal_readings.py)
def test_control_arms_run_as_plain_overrides(workdir, recast_run, arm):
    """The study's arms are plain --set overrides, each continuing the recast run's SFT checkpoint
    (checkpoint.load_dir); one optimizer step per RL step: the KL term is exactly 0 at the first step
    (reference == actor) and positive after."""
    overrides = {
        "grpo_gt": ["signal.builder=grpo_gt"],
        "recast_advantages": ["signal.recast.update=advantages"],
        "more_sft": ["rl.mode=more_sft"],
    }[arm]
    init = recast_run / "checkpoints" / "sft_step_000004"
    config = _config(workdir, arm, rl={"steps": 2, "eval_every": 0, "ppo_mini_batch_size": 0},
                     checkpoint={"load_dir": str(init)})
    proc = _train(config, *[x for o in overrides for x in ("--set", o)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rl = [r for r in _records(workdir / arm) if r["stage"] == "rl"]
    assert len(rl) == 2
    if arm == "more_sft":  # SFT steps in the RL slots: no rollouts, an SFT loss, the SFT optimizer
        assert [r["rollouts"] for r in rl] == [0.0, 0.0] and rl[-1]["rollout_budget"] == 0
        assert all(r["actor/loss"] > 0 and "actor/kl_ref_mean" not in r for r in rl)
        return
    assert rl[0]["actor/kl_ref_mean"] == 0.0 and rl[1]["actor/kl_ref_mean"] > 0
    assert [r["actor/optimizer_steps"] for r in rl] == [1.0, 1.0]
    if arm == "grpo_gt":
        assert rl[0]["signal/frac_repaired"] > 0 and rl[0]["update_width"] > 4  # G sampled rows + GT rows
        assert rl[0]["actor/gt_nll_mean"] > 0
    else:
        assert rl[0]["update_width"] <= 2 and rl[0]["actor/pg_loss_mean"] is not None
