"""Bad input stops early with a message that says what to fix (pure checks, no processes)."""

import json

import pytest

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import to_dict
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.trainer.checks import (
    SetupError,
    check_checkpoint_matches,
    check_parallel_layout,
    check_prepared_dataset,
    check_rollout_layout,
    check_more_sft,
    check_rl_optimizer,
    check_stage_inits,
)
from recast_mcore.trainer.data_feed import EpochSampler


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(SetupError, match="recast-data prepare"):
        check_prepared_dataset(str(tmp_path / "nope"))
    with pytest.raises(SetupError, match="data.prepared_dir is empty"):
        check_prepared_dataset("")
    (tmp_path / "half").mkdir()
    with pytest.raises(SetupError, match="missing meta.json, config.yaml"):
        check_prepared_dataset(str(tmp_path / "half"))


def test_parallel_layout_must_divide_world_size():
    with pytest.raises(SetupError, match=r"tensor_parallel\(2\) \* pipeline_parallel\(2\) = 4 does not divide WORLD_SIZE=6"):
        check_parallel_layout(ParallelConfig(tensor_parallel=2, pipeline_parallel=2), 6, num_layers=4, num_heads=4)
    with pytest.raises(SetupError, match="num_attention_heads=4"):
        check_parallel_layout(ParallelConfig(tensor_parallel=8), 8, num_layers=4, num_heads=4)
    with pytest.raises(SetupError, match="num_layers=3"):
        check_parallel_layout(ParallelConfig(pipeline_parallel=2), 2, num_layers=3, num_heads=4)
    assert check_parallel_layout(ParallelConfig(tensor_parallel=2), 8, num_layers=4, num_heads=4) == 4


def _fake_actor_meta(path, model_cfg, vocab_size):
    (path / "actor_meta.json").write_text(json.dumps({"model": to_dict(model_cfg), "vocab_size": vocab_size}))


def test_checkpoint_model_mismatch_lists_fields(tmp_path):
    _fake_actor_meta(tmp_path, ModelConfig(hidden_size=64), vocab_size=52)
    check_checkpoint_matches(tmp_path, ModelConfig(hidden_size=64, params_dtype="bf16"), 52)  # numerics may change
    with pytest.raises(SetupError) as err:
        check_checkpoint_matches(tmp_path, ModelConfig(hidden_size=128, ffn_hidden_size=256), 60)
    text = str(err.value)
    assert "model.hidden_size: checkpoint 64 vs config 128" in text
    assert "model.ffn_hidden_size" in text and "vocabulary size: checkpoint 52 vs prepared dataset 60" in text
    assert "num_layers" not in text
    with pytest.raises(SetupError, match="not a complete actor checkpoint"):
        check_checkpoint_matches(tmp_path / "..", ModelConfig(), 52)


def test_engine_and_stage_settings():
    with pytest.raises(SetupError, match="needs WORLD_SIZE=1"):
        check_rollout_layout(RolloutConfig(engine="torch"), 2)
    check_rollout_layout(RolloutConfig(engine="sglang"), 2)
    with pytest.raises(SetupError, match="sft.enabled=false"):
        check_stage_inits(True, "/some/ckpt")
    with pytest.raises(SetupError, match=r"rl.optim.distributed_optimizer=True differs from optim.distributed_optimizer=False"):
        check_rl_optimizer(OptimConfig(distributed_optimizer=True), OptimConfig())
    check_rl_optimizer(OptimConfig(lr=1e-6), OptimConfig())
    with pytest.raises(SetupError, match="rl.optim.overlap_grad_reduce"):
        check_rl_optimizer(OptimConfig(overlap_grad_reduce=True), OptimConfig())
    with pytest.raises(SetupError, match="checkpoint.load_dir"):
        check_more_sft("more_sft", "/some/sft/ckpt")
    check_more_sft("more_sft", "")


def test_epoch_sampler_is_step_addressed_and_covers_each_epoch():
    s1 = EpochSampler(list(range(10)), 4, seed=3, name="x")
    s2 = EpochSampler(list(range(10)), 4, seed=3, name="x")
    batches = [s1.batch(i) for i in range(5)]
    assert s2.batch(3) == batches[3]  # no hidden state: a fresh sampler gives step 3 directly
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]
    assert EpochSampler(list(range(10)), 4, seed=4, name="x").batch(0) != batches[0]
    assert s1.extra(3, 1, 4) == s2.extra(3, 1, 4) != s1.extra(3, 2, 4)
