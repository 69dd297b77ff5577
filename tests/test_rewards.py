"""Rewards: hit and graded prefix match on a hand-made semantic-ID table; registry and input errors."""

import pytest
import torch

from recast_mcore.config.signal import PrefixMatchConfig, RewardConfig
from recast_mcore.rewards import compute_rewards, get_reward, register_reward

# 4 items x 3 levels: item 0 = (4, 10, 20), 1 shares 2 levels with 0, 2 shares 1 level, 3 shares none
ITEM_TOKENS = torch.tensor([[4, 10, 20], [4, 10, 21], [4, 11, 20], [5, 10, 20]])


def test_hit_reward():
    item_ids = torch.tensor([[0, 1, 2, -1], [3, 3, 1, 0]])
    r = compute_rewards(item_ids, [[0], [3, 1]], ITEM_TOKENS, RewardConfig())
    assert r.dtype == torch.float32
    assert r.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]


def test_prefix_match_uniform_and_weighted():
    item_ids = torch.tensor([[0, 1, 2, 3, -1]])
    r = compute_rewards(item_ids, [[0]], ITEM_TOKENS, RewardConfig(name="prefix_match"))
    assert r[0].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])
    # the prefix must be contiguous: item 3 matches levels 1 and 2 but not level 0 -> 0
    weighted = RewardConfig(name="prefix_match", prefix_match=PrefixMatchConfig(level_weights=[0.5, 0.3, 0.2]))
    r = compute_rewards(item_ids, [[0]], ITEM_TOKENS, weighted)
    assert r[0].tolist() == pytest.approx([1.0, 0.8, 0.5, 0.0, 0.0])


def test_prefix_match_takes_best_target():
    r = compute_rewards(torch.tensor([[2]]), [[3, 1, 0]], ITEM_TOKENS, RewardConfig(name="prefix_match"))
    assert r.item() == pytest.approx(1 / 3)  # vs 3: 0, vs 1: 1 level, vs 0: 1 level
    r = compute_rewards(torch.tensor([[1]]), [[3, 1]], ITEM_TOKENS, RewardConfig(name="prefix_match"))
    assert r.item() == pytest.approx(1.0)


def test_reward_input_errors():
    cfg = RewardConfig()
    with pytest.raises(ValueError, match="empty target set"):
        compute_rewards(torch.tensor([[0]]), [[]], ITEM_TOKENS, cfg)
    with pytest.raises(ValueError, match="target item outside"):
        compute_rewards(torch.tensor([[0]]), [[7]], ITEM_TOKENS, cfg)
    with pytest.raises(ValueError, match="item_ids must be in"):
        compute_rewards(torch.tensor([[4]]), [[0]], ITEM_TOKENS, cfg)
    with pytest.raises(ValueError, match="targets has 2 entries"):
        compute_rewards(torch.tensor([[0]]), [[0], [1]], ITEM_TOKENS, cfg)
    bad_weights = RewardConfig(name="prefix_match", prefix_match=PrefixMatchConfig(level_weights=[1.0]))
    with pytest.raises(ValueError, match="level_weights has 1 entries"):
        compute_rewards(torch.tensor([[0]]), [[0]], ITEM_TOKENS, bad_weights)


def test_reward_registry_errors():
    with pytest.raises(KeyError, match="valid: hit, prefix_match"):
        get_reward("ndcg")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("hit")(lambda *a: None)
