"""PPO mini-batch plan, the old-log-prob recompute rule and metric aggregation (pure, no Megatron)."""

import torch

from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.config.train import RlConfig, openonerec_rl_optim
from recast_mcore.trainer.rl_update import mean_over_steps, minibatch_plan, recompute_old, rollout_precision_differs


def _groups(plan, group_index):
    return [sorted(set(group_index[rows].tolist())) for rows in plan]


def test_minibatch_plan_whole_groups_seeded_and_epochs():
    # 6 groups; group 2 sent no row (ReCast skip), group 4 has 3 rows
    group_index = torch.tensor([0, 0, 1, 1, 3, 3, 4, 4, 4, 5, 5])
    cfg = RlConfig(ppo_mini_batch_size=2, ppo_epochs=2)
    plan = minibatch_plan(group_index, 6, cfg, seed=1, step=3)
    groups = _groups(plan, group_index)
    assert len(plan) == 6 and all(len(g) <= 2 for g in groups)  # 3 chunks x 2 epochs (no chunk is all-skipped here)
    for epoch in (groups[:3], groups[3:]):
        assert sorted(g for chunk in epoch for g in chunk) == [0, 1, 3, 4, 5]  # every present group once per epoch
    for rows in plan:  # rows of a mini-batch: whole groups, in batch order
        assert rows.tolist() == sorted(rows.tolist())
        for g in set(group_index[rows].tolist()):
            assert (group_index[rows] == g).sum() == (group_index == g).sum()
    assert [p.tolist() for p in minibatch_plan(group_index, 6, cfg, seed=1, step=3)] == [p.tolist() for p in plan]
    assert _groups(minibatch_plan(group_index, 6, cfg, seed=1, step=4), group_index) != groups  # another step, another order
    in_order = minibatch_plan(group_index, 6, RlConfig(ppo_mini_batch_size=2, ppo_shuffle=False), seed=1, step=3)
    assert _groups(in_order, group_index) == [[0, 1], [3], [4, 5]]


def test_minibatch_plan_skips_empty_chunks_and_defaults_to_one_step():
    group_index = torch.tensor([0, 0, 1, 1])  # groups 2, 3 sent nothing
    plan = minibatch_plan(group_index, 4, RlConfig(ppo_mini_batch_size=2, ppo_shuffle=False), seed=0, step=1)
    assert [p.tolist() for p in plan] == [[0, 1, 2, 3]]  # the chunk of groups 2, 3 is no optimizer step
    whole = minibatch_plan(group_index, 4, RlConfig(), seed=0, step=1)
    assert [p.tolist() for p in whole] == [[0, 1, 2, 3]]
    assert len(minibatch_plan(group_index, 4, RlConfig(ppo_epochs=3), seed=0, step=1)) == 3


def test_recompute_rule():
    fp32, bf16 = ModelConfig(), ModelConfig(params_dtype="bf16")
    torch_engine, sgl32 = RolloutConfig(engine="torch"), RolloutConfig()
    sgl_bf16 = RolloutConfig()
    sgl_bf16.sglang.dtype = "bfloat16"
    assert not rollout_precision_differs(torch_engine, bf16) and not rollout_precision_differs(sgl32, fp32)
    assert rollout_precision_differs(sgl32, bf16) and not rollout_precision_differs(sgl_bf16, bf16)
    assert rollout_precision_differs(sgl_bf16, ModelConfig(params_dtype="bf16", fp8="hybrid"))
    auto = RlConfig()
    assert not recompute_old(auto, 1, sgl32, fp32) and recompute_old(auto, 2, sgl32, fp32) and recompute_old(auto, 1, sgl32, bf16)
    assert recompute_old(RlConfig(recompute_old_logprobs="always"), 1, sgl32, fp32)
    assert not recompute_old(RlConfig(recompute_old_logprobs="never"), 8, sgl32, bf16)


def test_mean_over_steps_and_openonerec_optimizer_defaults():
    m = mean_over_steps([{"loss": 1.0, "lr": 0.1, "clipfrac_mean": 0.0}, {"loss": 3.0, "lr": 0.2, "clipfrac_mean": 0.5}])
    assert m == {"loss": 2.0, "lr": 0.2, "clipfrac_mean": 0.25}
    o = openonerec_rl_optim()
    assert (o.lr, o.warmup_steps, o.decay_style, o.weight_decay, o.clip_grad) == (2e-6, 10, "constant", 0.1, 1.0)
    assert RlConfig().optim == o
