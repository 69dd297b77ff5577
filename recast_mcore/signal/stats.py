"""Per-step statistics of the learning signal (pure torch).

Group categories are computed from the SAMPLED rewards ``r [B, G]`` with the builder's positive and
negative thresholds (hit reward: positive = 1, negative = 0):

- all-zero group:      ``all_g r[b, g] == 0``
- single-hit group:    exactly one ``g`` with ``r[b, g] >= positive_threshold``
- all-positive group:  ``all_g r[b, g] >= positive_threshold``
- repaired group:      the builder added a teacher-forced ANCHOR (ReCast repair)

``update_width = N / B``: sequences sent to the actor per prompt of the step.
``mean_margin``: over groups that contain a sampled positive AND a sampled negative,
the mean of ``s(strongest positive) - s(hardest negative)`` with ``s`` the rollout sequence
log-prob (the same selection ReCast uses), so the number is comparable between builders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from recast_mcore.signal.inputs import SignalInputs


@dataclass
class SignalStats:
    """What the signal stage did in one step; ``to_metrics`` flattens it for logging."""

    num_groups: int = 0
    """B, prompts (groups) in the step's rollout (after dynamic-sampling filtering)."""
    num_sequences: int = 0
    """N, rows sent to the actor."""
    num_pairs: int = 0
    """P, contrastive pairs (0 for GRPO)."""
    frac_all_zero: float = 0.0
    """Fraction of groups whose rewards are all zero."""
    frac_single_hit: float = 0.0
    """Fraction of groups with exactly one positive."""
    frac_all_positive: float = 0.0
    """Fraction of groups where every candidate is positive."""
    frac_repaired: float = 0.0
    """Fraction of groups that received a repaired (teacher-forced) positive anchor."""
    frac_skipped: float = 0.0
    """Fraction of groups that send no row to the actor (contrastive: no usable pair)."""
    frac_zero_signal: float = 0.0
    """Fraction of groups whose rows all carry zero advantage and no pair (no gradient)."""
    update_width: float = 0.0
    """N / B: sequences to the actor per prompt."""
    mean_margin: float = float("nan")
    """Mean s(strongest sampled positive) - s(hardest sampled negative) over groups having both (nan if none)."""
    mean_pair_margin: float = float("nan")
    """Mean old-policy score margin s+ - s- over the batch's pairs, anchors included (nan if no pair)."""
    mean_reward: float = 0.0
    """Mean sampled reward over all B * G candidates."""
    rollouts: int = 0
    """Candidates generated for this step (incl. dynamic-sampling extra rounds and dropped groups)."""
    extra_rollouts: int = 0
    """Candidates generated beyond the first round by dynamic sampling."""
    sampling_rounds: int = 1
    """Generation rounds used (dynamic sampling; 1 otherwise)."""
    dropped_groups: int = 0
    """Groups discarded by the dynamic-sampling filter (zero reward variance)."""
    sampling_exhausted: bool = False
    """Dynamic sampling hit its round cap before the batch was full (the batch has fewer groups)."""

    def to_metrics(self, prefix: str = "signal/") -> dict[str, float]:
        """Flat ``{prefix + field: float}`` for the trainer's logger."""
        return {prefix + k: float(v) for k, v in asdict(self).items()}


def group_categories(rewards: torch.Tensor, positive_threshold: float) -> dict[str, torch.Tensor]:
    """Boolean masks [B] of the group categories above, from rewards [B, G]."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    positive = rewards >= positive_threshold
    num_pos = positive.sum(dim=1)
    return {
        "all_zero": (rewards == 0).all(dim=1),
        "single_hit": num_pos == 1,
        "all_positive": num_pos == rewards.shape[1],
    }


def strongest_positive(rewards: torch.Tensor, seq_logprobs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[B] column of the strongest positive: highest reward, ties by highest sequence log-prob.

    rewards, seq_logprobs, positive: [B, G]. Rows with no positive return an arbitrary column;
    mask them with ``positive.any(1)``.
    """
    return lexicographic_argmax(rewards, seq_logprobs, positive)


def hardest_negatives(seq_logprobs: torch.Tensor, negative: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k negatives by sequence log-prob: (columns [B, k], valid [B, k]).

    ``valid[b, j]`` is False when group b has fewer than j + 1 negatives.
    """
    k = min(k, seq_logprobs.shape[1])
    score = seq_logprobs.masked_fill(~negative, float("-inf"))
    top = torch.topk(score, k, dim=1)
    valid = torch.gather(negative, 1, top.indices)
    return top.indices, valid


def lexicographic_argmax(primary: torch.Tensor, secondary: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (primary, then secondary) among ``allowed`` entries, all [B, G]."""
    neg_inf = torch.tensor(float("-inf"), dtype=primary.dtype)
    best_primary = torch.where(allowed, primary, neg_inf).max(dim=1, keepdim=True).values
    tied = allowed & (primary == best_primary)
    return torch.where(tied, secondary.to(primary.dtype), neg_inf).argmax(dim=1)


def sampled_margin(rewards: torch.Tensor, seq_logprobs: torch.Tensor, positive_threshold: float, negative_threshold: float) -> float:
    """``mean_margin`` above: mean over groups with both a positive and a negative (nan if none)."""
    positive = rewards >= positive_threshold
    negative = rewards <= negative_threshold
    both = positive.any(1) & negative.any(1)
    if not bool(both.any()):
        return float("nan")
    pos_col = strongest_positive(rewards, seq_logprobs, positive)
    neg_col, _ = hardest_negatives(seq_logprobs, negative, 1)
    rows = torch.arange(rewards.shape[0])
    margin = seq_logprobs[rows, pos_col] - seq_logprobs[rows, neg_col[:, 0]]
    return float(margin[both].mean())


def base_stats(inputs: SignalInputs, positive_threshold: float, negative_threshold: float) -> SignalStats:
    """Fields every builder shares: group categories, sampled margin, mean reward, rollout budget."""
    rewards = inputs.rewards.to(torch.float32)
    cats = group_categories(rewards, positive_threshold)
    seq = inputs.groups.seq_logprobs.to(torch.float32)
    info = inputs.sampling
    return SignalStats(
        num_groups=rewards.shape[0],
        frac_all_zero=frac(cats["all_zero"]),
        frac_single_hit=frac(cats["single_hit"]),
        frac_all_positive=frac(cats["all_positive"]),
        mean_margin=sampled_margin(rewards, seq, positive_threshold, negative_threshold),
        mean_reward=float(rewards.mean()) if rewards.numel() else 0.0,
        rollouts=info.rollouts if info else inputs.groups.num_sampled,
        extra_rollouts=info.extra_rollouts if info else 0,
        sampling_rounds=info.rounds if info else 1,
        dropped_groups=info.dropped_groups if info else 0,
        sampling_exhausted=info.exhausted if info else False,
    )


def frac(mask: torch.Tensor) -> float:
    """Mean of a bool mask as a float (0.0 when empty)."""
    return float(mask.float().mean()) if mask.numel() else 0.0
