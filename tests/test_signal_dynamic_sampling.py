"""DAPO dynamic sampling: keeps only groups with reward variance, draws more, counts every rollout."""

import pytest
import torch

from recast_mcore.config.signal import DynamicSamplingConfig, SignalConfig
from recast_mcore.signal import SignalInputs, build_update_batch, fill_with_varied_groups
from recast_mcore.signal.dynamic_sampling import has_reward_variance
from signal_helpers import EOS, ITEM_TOKENS, make_groups

G = 3


class ScriptedEngine:
    """generate(n): the next n groups of a fixed script of reward rows (group id in item_ids[:, 0])."""

    def __init__(self, reward_rows: list[list[float]]):
        self.rows = reward_rows
        self.next = 0
        self.asked: list[int] = []

    def __call__(self, n: int):
        self.asked.append(n)
        ids = list(range(self.next, self.next + n))
        self.next += n
        groups = make_groups([[i % 12] * G for i in ids], [[-1.0] * G] * n, [[0]] * n)
        rewards = torch.tensor([self.rows[i % len(self.rows)] for i in ids])
        return groups, rewards


VARIED, ZERO, ALL = [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def test_has_reward_variance():
    assert has_reward_variance(torch.tensor([VARIED, ZERO, ALL, [0.5, 0.5, 0.25]])).tolist() == [True, False, False, True]


def test_fill_keeps_only_varied_groups_and_counts_extra_rollouts():
    # group ids 0..: V Z Z A | V Z Z A | ...  -> one varied group in every 4
    engine = ScriptedEngine([VARIED, ZERO, ZERO, ALL])
    groups, rewards, info = fill_with_varied_groups(engine, 4, DynamicSamplingConfig(enabled=True, max_extra_rounds=5))
    assert engine.asked == [4, 4, 4, 4]
    assert groups.num_prompts == 4 and has_reward_variance(rewards).all()
    assert groups.item_ids[:, 0].tolist() == [0, 4, 8 % 12, 12 % 12]  # the first varied group of each round
    assert info.rounds == 4 and info.rollouts == 16 * G and info.extra_rollouts == 12 * G
    assert info.dropped_groups == 12 and not info.exhausted
    assert groups.num_sampled == 16 * G  # the budget includes dropped groups
    inputs = SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS, sampling=info)
    stats = build_update_batch(inputs, SignalConfig(builder="grpo")).stats
    assert (stats.rollouts, stats.extra_rollouts, stats.sampling_rounds, stats.dropped_groups) == (48, 36, 4, 12)
    assert stats.frac_zero_signal == 0.0


def test_fill_trims_surplus_and_uses_extra_round_size():
    engine = ScriptedEngine([VARIED, VARIED, ZERO])
    cfg = DynamicSamplingConfig(enabled=True, extra_round_prompts=2)
    groups, _, info = fill_with_varied_groups(engine, 5, cfg)
    # round 0: ids 0-4 keep 0,1,3,4; round 1: ids 5,6 keep 6 -> 5 kept exactly
    assert engine.asked == [5, 2] and groups.item_ids[:, 0].tolist() == [0, 1, 3, 4, 6]
    assert info.extra_rollouts == 2 * G and info.rollouts == 7 * G


def test_fill_exhausted_partial_or_raise():
    engine = ScriptedEngine([VARIED, ZERO, ZERO, ZERO])
    groups, rewards, info = fill_with_varied_groups(engine, 4, DynamicSamplingConfig(max_extra_rounds=1))
    assert info.exhausted and groups.num_prompts == 2 and info.rounds == 2 and info.rollouts == 8 * G
    inputs = SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS, sampling=info)
    stats = build_update_batch(inputs, SignalConfig(builder="grpo")).stats
    assert stats.sampling_exhausted and stats.to_metrics()["signal/sampling_exhausted"] == 1.0
    assert stats.num_groups == 2 and stats.dropped_groups == 6
    with pytest.raises(RuntimeError, match="kept 2/4 groups"):
        fill_with_varied_groups(ScriptedEngine([VARIED, ZERO, ZERO, ZERO]), 4,
                                DynamicSamplingConfig(max_extra_rounds=1, on_exhausted="raise"))


def test_fill_rejects_bad_generate_output():
    def short(n):
        groups, rewards = ScriptedEngine([VARIED])(n - 1)
        return groups, rewards

    with pytest.raises(ValueError, match="returned 1 groups"):
        fill_with_varied_groups(short, 2, DynamicSamplingConfig())
