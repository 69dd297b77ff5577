"""`grpo` builder: the OpenOneRec-RL / verl GRPO baseline (every sampled candidate goes to the actor).

Shapes: rewards r [B, G]; rollout log-probs [B, G, T].
    A[b, g] = (r[b, g] - mean_g r[b, :]) / (std_g r[b, :] + eps)
std: ``unbiased`` = torch.std (Bessel-corrected, as verl's ``compute_grpo_outcome_advantage``),
``biased`` = population std, ``none`` = no division (Dr. GRPO). A zero-variance group
(all-zero or all-positive) gets A = 0 on every candidate: no gradient.
The batch has N = B * G rows (group-major), each with its advantage broadcast to every token by
the ``ppo_clip`` loss (clip 0.2 / 0.28, optional k3 KL), token-mean aggregation.
"""

from __future__ import annotations

import torch

from recast_mcore.config.signal import GrpoConfig
from recast_mcore.signal.batch import Role, UpdateBatch
from recast_mcore.signal.inputs import SignalInputs
from recast_mcore.signal.registry import register_builder
from recast_mcore.signal.stats import SignalStats, base_stats, frac


def group_advantages(rewards: torch.Tensor, std: str, epsilon: float) -> torch.Tensor:
    """A [B, G] from rewards [B, G] (formula in the module docstring)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"GRPO needs a group size G >= 2, got {rewards.shape[1]}")
    if std not in ("unbiased", "biased", "none"):
        raise ValueError(f"unknown std '{std}'; valid: biased, none, unbiased")
    if rewards.shape[0] == 0:
        return torch.zeros_like(rewards)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if std == "none":
        return centered
    scale = rewards.std(dim=1, keepdim=True, unbiased=(std == "unbiased"))
    return centered / (scale + epsilon)


@register_builder("grpo")
def build_grpo(inputs: SignalInputs, cfg: GrpoConfig) -> UpdateBatch:
    """All B * G candidates with their group-normalized advantages, loss ``ppo_clip``."""
    groups, rewards = inputs.groups, inputs.rewards.to(torch.float32)
    b, g, t = groups.responses.shape
    adv = group_advantages(rewards, cfg.std, cfg.epsilon)
    n = b * g
    batch = UpdateBatch(
        prompt_ids=[groups.prompt_ids[i] for i in range(b) for _ in range(g)],
        responses=groups.responses.reshape(n, t),
        old_logprobs=groups.token_logprobs.reshape(n, t).to(torch.float32),
        advantages=adv.reshape(n),
        weights=torch.ones(n),
        roles=torch.full((n,), int(Role.SAMPLED), dtype=torch.int64),
        group_index=torch.arange(b).repeat_interleave(g),
        token_mask=torch.ones(n, t, dtype=torch.bool),
        pairs=torch.zeros(0, 2, dtype=torch.int64),
        pair_weights=torch.zeros(0),
        loss_name="ppo_clip",
        loss_params=cfg.loss,
        rewards=rewards.reshape(n),
    )
    batch.stats = grpo_stats(inputs, adv, cfg)
    return batch


def grpo_stats(inputs: SignalInputs, adv: torch.Tensor, cfg: GrpoConfig) -> SignalStats:
    """Statistics of a GRPO batch (definitions in ``recast_mcore.signal.stats``)."""
    rewards = inputs.rewards.to(torch.float32)
    b, g = rewards.shape
    stats = base_stats(inputs, cfg.positive_threshold, cfg.negative_threshold)
    stats.num_sequences = b * g
    stats.update_width = float(g) if b else 0.0
    stats.frac_zero_signal = frac((adv == 0).all(dim=1))
    return stats
