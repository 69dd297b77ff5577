"""Signal-stage and reward configuration (owned by recast_mcore/signal and recast_mcore/rewards).

Formulas and the reasons behind the defaults are in docs/signal.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(kw_only=True)
class PrefixMatchConfig:
    """Graded prefix-match reward: credit for matching the first semantic-ID levels of a target."""

    level_weights: list[float] = field(default_factory=list)
    """Credit of each item-token level (length item_len); empty = uniform 1/item_len each.
    Reward = sum of the weights of the matched leading levels / sum of all weights (max over targets)."""

    def validate(self) -> None:
        _require(all(w >= 0 for w in self.level_weights), "prefix_match.level_weights must be >= 0")
        _require(not self.level_weights or sum(self.level_weights) > 0, "prefix_match.level_weights must not all be 0")


@dataclass(kw_only=True)
class RewardConfig:
    """Which reward scores a candidate item against the prompt's target set."""

    name: Literal["hit", "prefix_match"] = "hit"
    """`hit`: 1 if the item is in the target set else 0 (default). `prefix_match`: graded credit in [0, 1]."""
    prefix_match: PrefixMatchConfig = field(default_factory=PrefixMatchConfig)
    """Settings of the `prefix_match` reward."""


@dataclass(kw_only=True)
class PpoLossConfig:
    """`ppo_clip` policy loss (verl `compute_policy_loss` vanilla + optional k3 KL), token-mean."""

    clip_low: float = 0.2
    """Lower clip: ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.28
    """Upper clip (DAPO clip-higher): ratio is clipped at 1 + clip_high."""
    dual_clip_c: float | None = 3.0
    """Dual-clip constant for negative advantages (verl default 3.0); null disables it. Must be > 1."""
    use_kl: bool = False
    """Add a KL penalty to the reference policy (needs `ref_logprobs` in the batch)."""
    kl_coef: float = 0.001
    """Coefficient of the k3 KL term."""
    kl_clamp: float = 10.0
    """The per-token k3 value is clamped to [-kl_clamp, kl_clamp] (verl `low_var_kl`)."""

    def validate(self) -> None:
        _require(0 <= self.clip_low < 1, f"clip_low must be in [0, 1), got {self.clip_low}")
        _require(self.clip_high >= 0, f"clip_high must be >= 0, got {self.clip_high}")
        _require(self.dual_clip_c is None or self.dual_clip_c > 1, f"dual_clip_c must be > 1 or null, got {self.dual_clip_c}")
        _require(self.kl_coef >= 0 and self.kl_clamp > 0, "kl_coef must be >= 0 and kl_clamp > 0")


@dataclass(kw_only=True)
class GrpoConfig:
    """`grpo` builder: group-normalized advantages on every sampled candidate (OpenOneRec-RL / verl)."""

    std: Literal["unbiased", "biased", "none"] = "unbiased"
    """Group std in A = (r - mean)/(std + eps): `unbiased` = torch.std (verl), `biased` = population std,
    `none` = no division (Dr. GRPO)."""
    epsilon: float = 1e-6
    """eps in the advantage denominator."""
    positive_threshold: float = 1.0
    """Reward at or above which a candidate counts as positive (statistics only)."""
    negative_threshold: float = 0.0
    """Reward at or below which a candidate counts as negative (statistics only)."""
    loss: PpoLossConfig = field(default_factory=PpoLossConfig)
    """The policy loss the actor applies."""

    def validate(self) -> None:
        _require(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
        _require(self.negative_threshold < self.positive_threshold, "negative_threshold must be < positive_threshold")
        self.loss.validate()


@dataclass(kw_only=True)
class ContrastLossConfig:
    """`pairwise_contrast` loss on constrained sequence scores s = sum_t log pi_c(y_t | x, y_<t)."""

    form: Literal["logsigmoid", "hinge"] = "logsigmoid"
    """`logsigmoid`: -log sigmoid(beta (s+ - s-) - margin). `hinge`: max(0, margin - beta (s+ - s-))."""
    beta: float = 1.0
    """Scale of the score difference."""
    margin: float = 1.0
    """Required margin (nats after scaling by beta) between positive and negative scores."""
    score: Literal["sum", "mean"] = "sum"
    """Sequence score: sum of token log-probs, or their mean over the counted tokens (length-normalized)."""
    anchor_nll_coef: float = 0.0
    """Optional extra term coef * weight * (-s) on ANCHOR rows (teacher-forced NLL of the repaired positive)."""
    ratio_clip: bool = False
    """PPO-style trust region on sequence ratios: s+ capped at s+_old + log(1 + clip_high), s- floored at
    s-_old + log(1 - clip_low); the pair term stops pushing a sequence once it left the region."""
    clip_low: float = 0.2
    """Lower ratio clip for `ratio_clip`."""
    clip_high: float = 0.28
    """Upper ratio clip for `ratio_clip`."""

    def validate(self) -> None:
        _require(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _require(self.anchor_nll_coef >= 0, f"anchor_nll_coef must be >= 0, got {self.anchor_nll_coef}")
        _require(0 <= self.clip_low < 1 and self.clip_high >= 0, "clip_low must be in [0, 1) and clip_high >= 0")


@dataclass(kw_only=True)
class RecastConfig:
    """`recast` builder: repair groups without a positive, then contrast strongest positive vs hardest negative."""

    positive_threshold: float = 1.0
    """Reward at or above which a candidate is a positive (hit reward: a hit)."""
    negative_threshold: float = 0.0
    """Reward at or below which a candidate is a negative (hit reward: a miss)."""
    repair: bool = True
    """Give a group with no positive the ground-truth target as a teacher-forced ANCHOR positive."""
    anchor_target: Literal["first", "policy_best"] = "first"
    """With several targets: the first one, or the one the current policy scores highest (needs score_fn)."""
    anchor_weight: float = 1.0
    """Weight of pairs (and of the optional NLL term) whose positive is a repaired anchor."""
    num_negatives: int = 1
    """k hardest negatives per group (one pair each); 1 = the single hardest."""
    no_negative: Literal["skip", "lowest_reward"] = "skip"
    """Group with a positive but no negative: skip it, or contrast against its lowest-reward member
    (ties: lowest log-prob) that is a different item from the positive."""
    loss: ContrastLossConfig = field(default_factory=ContrastLossConfig)
    """The contrastive loss the actor applies."""

    def validate(self) -> None:
        _require(self.negative_threshold < self.positive_threshold, "negative_threshold must be < positive_threshold")
        _require(self.anchor_weight >= 0, f"anchor_weight must be >= 0, got {self.anchor_weight}")
        _require(self.num_negatives >= 1, f"num_negatives must be >= 1, got {self.num_negatives}")
        self.loss.validate()


@dataclass(kw_only=True)
class DynamicSamplingConfig:
    """DAPO-style dynamic sampling: drop zero-variance groups, draw more prompts until the batch is full."""

    enabled: bool = False
    """Turn the filter on (used with `grpo`; it would discard the groups ReCast repairs)."""
    max_extra_rounds: int = 4
    """Cap on generation rounds after the first."""
    extra_round_prompts: int = 0
    """Prompts drawn per extra round; 0 = the batch size (DAPO's gen_batch_size)."""
    on_exhausted: Literal["use_partial", "raise"] = "use_partial"
    """Batch still short after the cap: train on the kept groups (recorded in the statistics) or raise."""

    def validate(self) -> None:
        _require(self.max_extra_rounds >= 0, f"max_extra_rounds must be >= 0, got {self.max_extra_rounds}")
        _require(self.extra_round_prompts >= 0, f"extra_round_prompts must be >= 0, got {self.extra_round_prompts}")


@dataclass(kw_only=True)
class SignalConfig:
    """Which builder turns rewarded rollouts into the actor's update batch, and its settings."""

    builder: Literal["grpo", "recast"] = "recast"
    """Registered signal builder (recast_mcore/signal/builders.py)."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """Settings of the `grpo` builder."""
    recast: RecastConfig = field(default_factory=RecastConfig)
    """Settings of the `recast` builder."""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    """DAPO dynamic sampling applied to rollouts before the builder."""
