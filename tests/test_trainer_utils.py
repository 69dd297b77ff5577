"""Run-directory utilities: metric log truncation on resume, plots, checkpoint pointer, derived seeds."""

import json

import pytest

from recast_mcore.config.train import LoggingConfig
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.state import TrainerState
from recast_mcore.utils.metric_log import MetricLogger, read_records
from recast_mcore.utils.plots import plot_run
from recast_mcore.utils.rng import derive_seed


def _fill(logger):
    for s in (1, 2):
        logger.log("sft", s, 0, {"loss": 3.0 - s})
    logger.log("eval", 2, 0, {"pass@1": 0.1, "ndcg@10": 0.2}, at_stage="sft")
    for s in (1, 2, 3):
        logger.log("rl", s, 16 * s, {"reward_mean": 0.1 * s, "hit_rate": 0.1, "all_zero_group_frac": 0.5,
                                     "update_width": 2.0, "actor_time_s": 0.3})
    logger.log("eval", 3, 48, {"pass@1": 0.2, "ndcg@10": 0.3}, at_stage="rl")


def test_truncate_after_keeps_records_up_to_checkpoint(tmp_path):
    logger = MetricLogger(tmp_path, LoggingConfig(progress_bar=False))
    _fill(logger)
    logger.truncate_after("rl", 2)
    kept = read_records(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["step"]) for r in kept] == [("sft", 1), ("sft", 2), ("eval", 2), ("rl", 1), ("rl", 2)]
    logger.truncate_after("sft", 1)
    assert [(r["stage"], r["step"]) for r in read_records(tmp_path / "metrics.jsonl")] == [("sft", 1)]
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"stage": "rl", "step": 1, "rollout_budget": 8}) + "\n" + '{"stage": "rl", "st')
    assert len(read_records(path)) == 1


def test_plots_are_written(tmp_path):
    logger = MetricLogger(tmp_path, LoggingConfig(progress_bar=False, tensorboard=False))
    _fill(logger)
    written = {p.name for p in plot_run(tmp_path / "metrics.jsonl", tmp_path / "plots")}
    for key in ("reward_mean", "hit_rate", "all_zero_group_frac", "update_width", "actor_time_s"):
        assert f"rl_{key}_vs_step.png" in written and f"rl_{key}_vs_budget.png" in written
    assert {"eval_vs_step.png", "eval_vs_budget.png", "sft_loss.png"} <= written
    assert all((tmp_path / "plots" / name).stat().st_size > 1000 for name in written)


def test_checkpoint_scan_latest_pointer_and_prune(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    assert ckpt.read_latest(root) is None and ckpt.newest_first(root) == []
    for stage, step in (("sft", 5), ("rl", 1), ("rl", 2), ("rl", 3), ("sft", 40)):
        (root / ckpt.checkpoint_name(stage, step)).mkdir()
    (root / ckpt.LATEST).write_text("rl_step_000002\n")  # as MegatronActor.save writes it
    (root / ".rl_step_000004.tmp").mkdir()  # a save killed midway
    (root / "rl_step_000009.corrupt").mkdir()  # set aside on an earlier resume
    assert ckpt.read_latest(root).name == "rl_step_000002"
    # the scan orders by (stage, step), RL after SFT, and ignores temporary / set-aside directories
    assert [p.name for p in ckpt.newest_first(root)] == ["rl_step_000003", "rl_step_000002", "rl_step_000001",
                                                         "sft_step_000040", "sft_step_000005"]
    removed = {p.name for p in ckpt.prune(root, keep_last=2, current=root / "rl_step_000002")}
    assert removed == {"sft_step_000005", "sft_step_000040"}
    assert {p.name for p in root.iterdir()} >= {"rl_step_000003", ".rl_step_000004.tmp", "rl_step_000009.corrupt"}
    assert ckpt.quarantine(root / "rl_step_000003").name == "rl_step_000003.corrupt"
    (root / "rl_step_000003").mkdir()
    assert ckpt.quarantine(root / "rl_step_000003").name == "rl_step_000003.corrupt-2"
    (root / ckpt.LATEST).write_text("rl_step_000009\n")
    with pytest.raises(FileNotFoundError, match="rl_step_000009"):
        ckpt.read_latest(root)


def test_trainer_state_round_trip_and_position():
    st = TrainerState(stage="rl", sft_step=10, rl_step=3, rollout_budget=96, policy_version=3)
    assert TrainerState.from_dict(st.to_dict()) == st
    assert st.position == ("rl", 3)
    assert TrainerState(stage="rl", sft_step=10).position == ("sft", 10)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainerState.from_dict({"stage": "rl", "bogus": 1})


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(1, "rl", 3) == derive_seed(1, "rl", 3)
    assert len({derive_seed(1, "rl", s) for s in range(100)}) == 100
    assert derive_seed(1, "rl", 3) != derive_seed(2, "rl", 3)
