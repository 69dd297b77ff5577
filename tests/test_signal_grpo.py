"""`grpo` builder: hand-computed advantages and PPO loss, zero signal for all-zero groups, registry."""

import math

import pytest
import torch

from recast_mcore.config.signal import GrpoConfig, PpoLossConfig, RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.signal import SignalInputs, build_update_batch, compute_policy_loss, get_builder
from recast_mcore.signal.batch import Role
from recast_mcore.signal.grpo import group_advantages
from signal_helpers import EOS, ITEM_TOKENS, make_groups


def _inputs(item_ids, logps, targets):
    groups = make_groups(item_ids, logps, targets)
    rewards = compute_rewards(groups.item_ids, targets, ITEM_TOKENS, RewardConfig())
    return SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS)


def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # unbiased std of [1,0,0,0] = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    a = group_advantages(r, "unbiased", 1e-6)
    assert a[0].tolist() == pytest.approx([0.75 / 0.5, -0.5, -0.5, -0.5], rel=1e-5)
    assert a[1].tolist() == [0.0] * 4
    assert a[2].tolist() == pytest.approx([0.5 / math.sqrt(1 / 3)] * 2 + [-0.5 / math.sqrt(1 / 3)] * 2, rel=1e-5)
    b = group_advantages(r, "biased", 0.0)
    assert b[0, 0].item() == pytest.approx(0.75 / math.sqrt(0.1875))
    assert group_advantages(r, "none", 1e-6)[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(r[:, :1], "unbiased", 1e-6)


def test_grpo_batch_and_loss_hand_computed():
    inputs = _inputs([[0, 1, 2, 3], [4, 5, 6, 7]], [[-1.0, -2.0, -3.0, -4.0]] * 2, [[0], [9]])
    batch = build_update_batch(inputs, SignalConfig(builder="grpo"))
    assert batch.num_sequences == 8 and batch.loss_name == "ppo_clip" and batch.num_pairs == 0
    assert batch.roles.tolist() == [int(Role.SAMPLED)] * 8
    assert batch.group_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch.advantages[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    assert batch.advantages[4:].tolist() == [0.0] * 4  # all-zero group: no signal
    assert torch.equal(batch.old_logprobs, inputs.groups.token_logprobs.reshape(8, 4))
    # current policy: row 0 ratio 1.1 on every token (inside the clip), rows 1-3 unchanged
    lp = batch.old_logprobs.clone()
    lp[0] += math.log(1.1)
    loss_sum, denom, _ = compute_policy_loss(lp, batch)
    expected = 4 * (-1.5 * 1.1 + 3 * 0.5)  # 4 tokens per row
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    assert denom.item() == 32  # token-mean over all 8 x 4 tokens
    assert batch.stats.frac_all_zero == 0.5 and batch.stats.frac_zero_signal == 0.5
    assert batch.stats.update_width == 4.0


def test_all_zero_group_gives_zero_grpo_gradient():
    inputs = _inputs([[0, 1, 2]], [[-1.0, -2.0, -3.0]], [[9]])
    batch = build_update_batch(inputs, SignalConfig(builder="grpo"))
    lp = (batch.old_logprobs + 0.05 * torch.randn(3, 4)).requires_grad_(True)
    compute_policy_loss(lp, batch)[0].backward()
    assert torch.count_nonzero(lp.grad) == 0


def test_builder_registry_and_input_errors():
    with pytest.raises(KeyError, match="valid: grpo, grpo_gt, recast"):
        get_builder("ppo")
    inputs = _inputs([[0, 1]], [[-1.0, -2.0]], [[0]])
    inputs.rewards = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="rewards shape"):
        build_update_batch(inputs, SignalConfig(builder="grpo"))
    inputs = _inputs([[0, 1]], [[-1.0, -2.0]], [[0]])
    with pytest.raises(ValueError, match="clip_low"):
        build_update_batch(inputs, SignalConfig(builder="grpo", ppo=PpoLossConfig(clip_low=1.5)))
