"""DAPO-style dynamic sampling as a pure component (no engine: it calls an injected ``generate``).

    generate(num_prompts: int) -> (RolloutGroups with num_prompts groups, rewards [num_prompts, G])

Round 0 draws ``batch_size`` prompts. A group is kept iff its rewards vary:
``max_g r[b, g] > min_g r[b, g]`` (zero variance => zero GRPO advantage => no gradient).
While fewer than ``batch_size`` groups are kept and fewer than ``max_extra_rounds`` extra rounds
were run, draw ``extra_round_prompts`` (0 = batch_size) more prompts. Kept groups beyond
``batch_size`` are cut (first kept first). Every generated candidate counts in the rollout budget:
the returned ``RolloutGroups.num_sampled`` is the total over all rounds, dropped groups included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from recast_mcore.config.signal import DynamicSamplingConfig
from recast_mcore.rollout.types import RolloutGroups

GenerateFn = Callable[[int], tuple[RolloutGroups, torch.Tensor]]


@dataclass
class SamplingInfo:
    """Bookkeeping of one dynamic-sampling fill."""

    rounds: int
    """Generation rounds run (1 = no extra round)."""
    rollouts: int
    """Candidates generated over all rounds (sum of ``num_sampled``)."""
    extra_rollouts: int
    """Candidates generated in rounds after the first."""
    dropped_groups: int
    """Groups discarded for zero reward variance."""
    exhausted: bool
    """True when the round cap was hit before the batch was full (then fewer than batch_size groups)."""


def has_reward_variance(rewards: torch.Tensor) -> torch.Tensor:
    """[B] bool from rewards [B, G]: ``max_g r > min_g r``."""
    return rewards.max(dim=1).values > rewards.min(dim=1).values


def fill_with_varied_groups(
    generate: GenerateFn, batch_size: int, cfg: DynamicSamplingConfig
) -> tuple[RolloutGroups, torch.Tensor, SamplingInfo]:
    """Draw rounds until ``batch_size`` groups with reward variance are kept (or the cap is hit).

    Returns (kept groups, their rewards [B', G], info) with B' = batch_size unless exhausted.
    ``cfg.on_exhausted == "raise"`` raises ``RuntimeError`` instead of returning a short batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg.validate()
    kept_groups: list[RolloutGroups] = []
    kept_rewards: list[torch.Tensor] = []
    num_kept = rollouts = first_rollouts = dropped = rounds = 0
    while num_kept < batch_size and rounds <= cfg.max_extra_rounds:
        ask = batch_size if rounds == 0 else (cfg.extra_round_prompts or batch_size)
        groups, rewards = _checked_generate(generate, ask)
        rounds += 1
        rollouts += groups.num_sampled
        if rounds == 1:
            first_rollouts = groups.num_sampled
        keep = has_reward_variance(rewards)
        dropped += int((~keep).sum())
        idx = keep.nonzero().flatten()
        kept_groups.append(take_groups(groups, idx))
        kept_rewards.append(rewards[idx])
        num_kept += idx.numel()
    exhausted = num_kept < batch_size
    if exhausted and cfg.on_exhausted == "raise":
        raise RuntimeError(
            f"dynamic sampling kept {num_kept}/{batch_size} groups with reward variance after "
            f"{rounds} rounds ({rollouts} rollouts); raise max_extra_rounds or set on_exhausted=use_partial"
        )
    groups = concat_groups(kept_groups, num_sampled=rollouts)
    rewards = torch.cat(kept_rewards)
    cut = torch.arange(min(num_kept, batch_size))
    info = SamplingInfo(rounds, rollouts, rollouts - first_rollouts, dropped, exhausted)
    return take_groups(groups, cut, num_sampled=rollouts), rewards[cut], info


def _checked_generate(generate: GenerateFn, num_prompts: int) -> tuple[RolloutGroups, torch.Tensor]:
    groups, rewards = generate(num_prompts)
    groups.validate()
    if groups.num_prompts != num_prompts:
        raise ValueError(f"generate({num_prompts}) returned {groups.num_prompts} groups")
    if tuple(rewards.shape) != (groups.num_prompts, groups.group_size):
        raise ValueError(f"generate returned rewards {tuple(rewards.shape)} for groups {(groups.num_prompts, groups.group_size)}")
    return groups, rewards


def take_groups(groups: RolloutGroups, idx: torch.Tensor, num_sampled: int | None = None) -> RolloutGroups:
    """Groups ``idx`` [k] of ``groups``; ``num_sampled`` kept unless given."""
    rows = idx.tolist()
    return RolloutGroups(
        prompt_ids=[groups.prompt_ids[i] for i in rows],
        responses=groups.responses[idx],
        token_logprobs=groups.token_logprobs[idx],
        item_ids=groups.item_ids[idx],
        targets=[groups.targets[i] for i in rows],
        policy_version=groups.policy_version,
        num_sampled=groups.num_sampled if num_sampled is None else num_sampled,
    )


def concat_groups(parts: list[RolloutGroups], num_sampled: int) -> RolloutGroups:
    """Concatenate rounds along B; all parts must share G, T and the policy version."""
    if not parts:
        raise ValueError("concat_groups needs at least one part")
    versions = {p.policy_version for p in parts}
    if len(versions) != 1:
        raise ValueError(f"dynamic-sampling rounds came from different policy versions {sorted(versions)}")
    shapes = {tuple(p.responses.shape[1:]) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"dynamic-sampling rounds have different [G, T] shapes {sorted(shapes)}")
    return RolloutGroups(
        prompt_ids=[ids for p in parts for ids in p.prompt_ids],
        responses=torch.cat([p.responses for p in parts]),
        token_logprobs=torch.cat([p.token_logprobs for p in parts]),
        item_ids=torch.cat([p.item_ids for p in parts]),
        targets=[t for p in parts for t in p.targets],
        policy_version=parts[0].policy_version,
        num_sampled=num_sampled,
    )
