"""Signal statistics on constructed batches, for both builders; empty batches."""

import math

import pytest
import torch

from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.signal import SignalInputs, build_update_batch
from signal_helpers import EOS, ITEM_TOKENS, make_groups, toy_score_fn

# g0 all-zero, g1 single hit (item 3), g2 all positive (items 5, 6), g3 two hits of three
ITEMS = [[0, 1, 2], [3, 4, 0], [5, 6, 5], [7, 8, 9]]
LOGPS = [[-1.0, -2.0, -3.0], [-4.0, -1.5, -2.5], [-1.0, -1.0, -1.0], [-2.0, -0.5, -3.0]]
TARGETS = [[11], [3], [5, 6], [7, 8]]


def _inputs():
    groups = make_groups(ITEMS, LOGPS, TARGETS)
    rewards = compute_rewards(groups.item_ids, TARGETS, ITEM_TOKENS, RewardConfig())
    return SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS, score_fn=toy_score_fn())


def test_group_statistics_shared_by_builders():
    for builder in ("grpo", "recast"):
        stats = build_update_batch(_inputs(), SignalConfig(builder=builder)).stats
        assert stats.num_groups == 4
        assert (stats.frac_all_zero, stats.frac_single_hit, stats.frac_all_positive) == (0.25, 0.25, 0.25)
        # g1: s(item 3) - s(hardest neg item 4) = -4 + 1.5; g3: strongest hit item 8 (-0.5) - item 9 (-3)
        assert stats.mean_margin == pytest.approx(((-4.0 + 1.5) + (-0.5 + 3.0)) / 2)
        assert stats.mean_reward == pytest.approx(6 / 12)
        assert stats.rollouts == 12 and stats.sampling_rounds == 1


def test_grpo_statistics():
    stats = build_update_batch(_inputs(), SignalConfig(builder="grpo")).stats
    assert stats.num_sequences == 12 and stats.update_width == 3.0 and stats.num_pairs == 0
    assert stats.frac_zero_signal == 0.5 and stats.frac_repaired == 0.0  # g0 and g2 have zero variance
    assert math.isnan(stats.mean_pair_margin)


def test_recast_statistics():
    batch = build_update_batch(_inputs(), SignalConfig(builder="recast"))
    stats = batch.stats
    # g0 repaired (anchor item 11 + item 0), g1 pair, g2 skipped (all positive), g3 pair
    assert batch.group_index.tolist() == [0, 0, 1, 1, 3, 3]
    assert stats.num_sequences == 6 and stats.num_pairs == 3 and stats.update_width == 1.5
    assert stats.frac_repaired == 0.25 and stats.frac_skipped == 0.25 and stats.frac_zero_signal == 0.25
    anchor_score = -(1.0 + 11 / 10)
    assert stats.mean_pair_margin == pytest.approx(((anchor_score + 1.0) + (-4.0 + 1.5) + (-0.5 + 3.0)) / 3, rel=1e-5)
    metrics = stats.to_metrics()
    assert metrics["signal/update_width"] == 1.5 and all(isinstance(v, float) for v in metrics.values())


def test_empty_rollout_gives_empty_valid_batches():
    groups = make_groups([[0, 1]], [[-1.0, -2.0]], [[0]])
    empty = SignalInputs(
        groups=type(groups)(prompt_ids=[], responses=groups.responses[:0], token_logprobs=groups.token_logprobs[:0],
                            item_ids=groups.item_ids[:0], targets=[], policy_version=0, num_sampled=6),
        rewards=torch.zeros(0, 2), item_tokens=ITEM_TOKENS, eos_id=EOS)
    for builder in ("grpo", "recast"):
        batch = build_update_batch(empty, SignalConfig(builder=builder))
        assert batch.num_sequences == 0 and batch.stats.update_width == 0.0 and batch.stats.rollouts == 6
