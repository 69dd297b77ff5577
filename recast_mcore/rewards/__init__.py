"""Reward registry (hit, prefix_match): candidate items scored against each prompt's target set."""

from recast_mcore.rewards import item_rewards as _item_rewards  # noqa: F401  (registers the rewards)
from recast_mcore.rewards.registry import REWARDS, compute_rewards, get_reward, register_reward

__all__ = ["REWARDS", "compute_rewards", "get_reward", "register_reward"]
