"""`grpo` builder: the OpenOneRec-RL / verl GRPO baseline (every sampled candidate goes to the actor).

Shapes: rewards r [B, G]; rollout log-probs [B, G, T].
    A[b, g] = (r[b, g] - mean_g r[b, :]) / (std_g r[b, :] + eps)
std: ``unbiased`` = torch.std (Bessel-corrected, as verl's ``compute_grpo_outcome_advantage``),
``biased`` = population std, ``none`` = no division (Dr. GRPO). A zero-variance group
(all-zero or all-positive) gets A = 0 on every candidate: no gradient.
The batch has N = B * G rows (group-major), each with its advantage broadcast to every token by
the shared ``ppo_clip`` loss (``signal.ppo``: clip 0.2 / 0.28, dual clip 3; ``signal.kl``: optional k3 KL),
token-mean aggregation.
"""

from __future__ import annotations

import torch

from recast_mcore.config.signal import GrpoConfig
from recast_mcore.rewards.registry import target_hits
from recast_mcore.signal.anchors import ground_truth_rows
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
        loss_params=None,  # the shared signal.ppo, attached by build_update_batch
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


@register_builder("grpo_gt")
def build_grpo_gt(inputs: SignalInputs, cfg: GrpoConfig) -> UpdateBatch:
    """GRPO+GT control: the ``grpo`` batch plus, for every group with no full hit (no candidate is a target
    item: the groups ReCast repairs), one GT_NLL row = its ground-truth target teacher-forced
    (``gt_target`` as ReCast's ``anchor_target``), weight ``gt_nll_coef``. ``ppo_clip`` trains that row by
    its token NLL ``-lp_t`` in the same token-mean as the PPO term. Isolates ReCast's contrast from its
    injection of the ground truth. Rows of a group stay contiguous: [G sampled rows, GT row]."""
    base = build_grpo(inputs, cfg)
    groups = inputs.groups
    b, g, t = groups.responses.shape
    missing = (~target_hits(groups.item_ids, groups.targets).any(dim=1)).nonzero().flatten()
    gt_resp, gt_lp = ground_truth_rows(inputs, missing, cfg.gt_target)
    a = missing.numel()
    # sampled row (b, j) -> b * (G + 1) + j; the GT row of group b goes to b * (G + 1) + G (dropped if absent)
    width = g + 1
    keep = torch.ones(b, width, dtype=torch.bool)
    keep[:, g] = False
    keep[missing, g] = True
    flat = keep.reshape(-1)

    def place(sampled: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((b, width, *sampled.shape[1:]), dtype=sampled.dtype)
        out[:, :g] = sampled.reshape(b, g, *sampled.shape[1:])
        out[missing, g] = gt
        return out.reshape(b * width, *sampled.shape[1:])[flat]

    group = torch.arange(b).repeat_interleave(width)[flat]
    batch = UpdateBatch(
        prompt_ids=[groups.prompt_ids[i] for i in group.tolist()],
        responses=place(base.responses, gt_resp),
        old_logprobs=place(base.old_logprobs, gt_lp),
        advantages=place(base.advantages, torch.zeros(a)),
        weights=place(base.weights, torch.full((a,), cfg.gt_nll_coef)),
        roles=place(base.roles, torch.full((a,), int(Role.GT_NLL))),
        group_index=group,
        token_mask=torch.ones(int(flat.sum()), t, dtype=torch.bool),
        pairs=base.pairs,
        pair_weights=base.pair_weights,
        loss_name="ppo_clip",
        loss_params=None,
        rewards=place(base.rewards, torch.ones(a)),
    )
    batch.stats = base.stats
    batch.stats.num_sequences = batch.num_sequences
    batch.stats.update_width = batch.num_sequences / b if b else 0.0
    batch.stats.frac_repaired = a / b if b else 0.0
    no_gt = torch.ones(b, dtype=torch.bool)
    no_gt[missing] = False
    batch.stats.frac_zero_signal = frac((base.advantages.view(b, g) == 0).all(dim=1) & no_gt)
    return batch
