"""Rank 0's half of an RL step: prompts -> rollout groups -> rewards -> UpdateBatch.

Rollout statistics are measured over EVERY generated candidate (dynamic sampling's dropped groups
and extra rounds included), B_all prompts x G candidates in total:
  rollouts            = sum of ``num_sampled`` over rounds (the step's rollout budget)
  reward_mean         = mean reward over all candidates
  hit_rate            = fraction of candidates whose item is in the prompt's target set
  all_zero_group_frac = fraction of generated groups whose rewards are all 0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.rewards import compute_rewards
from recast_mcore.rewards.registry import target_hits
from recast_mcore.rollout.modes import roll_out
from recast_mcore.rollout.types import RolloutGroups
from recast_mcore.signal import SignalInputs, UpdateBatch, build_update_batch, fill_with_varied_groups
from recast_mcore.trainer.data_feed import EpochSampler


@dataclass
class RolloutTally:
    """Running sums over every candidate generated in one step."""

    rollouts: int = 0
    candidates: int = 0
    reward_sum: float = 0.0
    hits: int = 0
    groups: int = 0
    all_zero_groups: int = 0
    rounds: int = 0
    policy_versions: set = field(default_factory=set)

    def add(self, groups: RolloutGroups, rewards: torch.Tensor) -> None:
        self.rollouts += groups.num_sampled
        self.candidates += rewards.numel()
        self.reward_sum += float(rewards.sum())
        self.hits += int(target_hits(groups.item_ids, groups.targets).sum())
        self.groups += rewards.shape[0]
        self.all_zero_groups += int((rewards == 0).all(dim=1).sum())
        self.rounds += 1
        self.policy_versions.add(groups.policy_version)

    def metrics(self) -> dict[str, float]:
        return {
            "rollouts": float(self.rollouts),
            "reward_mean": self.reward_sum / max(self.candidates, 1),
            "hit_rate": self.hits / max(self.candidates, 1),
            "all_zero_group_frac": self.all_zero_groups / max(self.groups, 1),
            "sampling_rounds": float(self.rounds),
        }


def _generate(engine: Any, vocab: ItemVocab, examples: list, sampling: RolloutConfig | SamplingConfig,
              reward_cfg: RewardConfig, tally: RolloutTally) -> tuple[RolloutGroups, torch.Tensor]:
    prompt_ids = [vocab.encode_prompt(ex.history) for ex in examples]
    groups = roll_out(engine, prompt_ids, [list(ex.targets) for ex in examples], sampling)  # rollout.mode
    rewards = compute_rewards(groups.item_ids, groups.targets, vocab.item_tokens, reward_cfg).float()
    tally.add(groups, rewards)
    return groups, rewards


def build_step_batch(
    step: int, engine: Any, prompts: EpochSampler, vocab: ItemVocab, sampling: RolloutConfig | SamplingConfig,
    reward_cfg: RewardConfig, signal_cfg: SignalConfig, score_fn: Any,
) -> tuple[UpdateBatch, dict[str, float]]:
    """Roll out the step's prompts (plus dynamic-sampling rounds), reward them and build the UpdateBatch."""
    tally = RolloutTally()
    batch_prompts = prompts.batch(step - 1)
    if signal_cfg.dynamic_sampling.enabled:
        def generate(n: int) -> tuple[RolloutGroups, torch.Tensor]:
            examples = batch_prompts if tally.rounds == 0 else prompts.extra(step, tally.rounds, n)
            return _generate(engine, vocab, examples[:n], sampling, reward_cfg, tally)

        groups, rewards, info = fill_with_varied_groups(generate, len(batch_prompts), signal_cfg.dynamic_sampling)
    else:
        groups, rewards = _generate(engine, vocab, batch_prompts, sampling, reward_cfg, tally)
        info = None
    if len(tally.policy_versions) != 1:
        raise RuntimeError(f"one step's rollouts came from several policy versions {sorted(tally.policy_versions)}")
    inputs = SignalInputs(groups=groups, rewards=rewards, item_tokens=vocab.item_tokens, eos_id=vocab.eos_id,
                          score_fn=score_fn, sampling=info)
    batch = build_update_batch(inputs, signal_cfg)
    return batch, tally.metrics()
