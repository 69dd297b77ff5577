"""Bad input stops early with a message that says what to fix (pure checks, no processes)."""

import pytest

from recast_mcore.config.actor import ModelConfig, ParallelConfig
from recast_mcore.trainer.checks import (
    SetupError,
    check_checkpoint_matches,
    check_parallel_layout,
    check_prepared_dataset,
    write_model_meta,
)
from recast_mcore.trainer.data_feed import EpochSampler, sft_examples


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(SetupError, match="recast-data prepare"):
        check_prepared_dataset(str(tmp_path / "nope"))
    with pytest.raises(SetupError, match="data.prepared_dir is empty"):
        check_prepared_dataset("")
    (tmp_path / "half").mkdir()
    with pytest.raises(SetupError, match="missing meta.json"):
        check_prepared_dataset(str(tmp_path / "half"))


def test_parallel_layout_must_divide_world_size():
    with pytest.raises(SetupError, match=r"tensor_parallel\(2\) \* pipeline_parallel\(2\) = 4 does not divide WORLD_SIZE=6"):
        check_parallel_layout(ParallelConfig(tensor_parallel=2, pipeline_parallel=2), 6, num_layers=4, num_heads=4)
    with pytest.raises(SetupError, match="num_attention_heads=4"):
        check_parallel_layout(ParallelConfig(tensor_parallel=8), 8, num_layers=4, num_heads=4)
    with pytest.raises(SetupError, match="num_layers=3"):
        check_parallel_layout(ParallelConfig(pipeline_parallel=2), 2, num_layers=3, num_heads=4)
    assert check_parallel_layout(ParallelConfig(tensor_parallel=2), 8, num_layers=4, num_heads=4) == 4


def test_checkpoint_model_mismatch_lists_fields(tmp_path):
    write_model_meta(tmp_path, ModelConfig(hidden_size=64), vocab_size=52)
    check_checkpoint_matches(tmp_path, ModelConfig(hidden_size=64), 52)
    with pytest.raises(SetupError) as err:
        check_checkpoint_matches(tmp_path, ModelConfig(hidden_size=128, ffn_hidden_size=256), 60)
    text = str(err.value)
    assert "model.hidden_size: checkpoint 64 vs config 128" in text
    assert "model.ffn_hidden_size" in text and "data vocabulary: checkpoint 52 vs config 60" in text
    assert "num_layers" not in text
    with pytest.raises(SetupError, match="not a recast checkpoint"):
        check_checkpoint_matches(tmp_path / "..", ModelConfig(), 52)


class _Ex:
    def __init__(self, user, history, targets):
        self.user, self.history, self.targets = user, history, targets


def test_sft_examples_are_every_prefix():
    exs = sft_examples([_Ex(0, [5, 6, 7], [8])], max_history=2)
    assert [(e.history, e.targets) for e in exs] == [((5,), (6,)), ((5, 6), (7,)), ((6, 7), (8,))]


def test_epoch_sampler_is_step_addressed_and_covers_each_epoch():
    s1 = EpochSampler(list(range(10)), 4, seed=3, name="x")
    s2 = EpochSampler(list(range(10)), 4, seed=3, name="x")
    batches = [s1.batch(i) for i in range(5)]
    assert s2.batch(3) == batches[3]  # no hidden state: a fresh sampler gives step 3 directly
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]
    assert EpochSampler(list(range(10)), 4, seed=4, name="x").batch(0) != batches[0]
