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
class KlConfig:
    """KL penalty to the frozen reference policy, in the loss (not in the reward), for every builder.

    Per token: ``d = clamp(ref - lp, -20, 20)``, ``k3 = clamp(exp(d) - d - 1, -clamp, clamp)`` (verl
    ``low_var_kl``, the low-variance k3 estimator); added as ``coef * k3`` to each counted token's loss.
    """

    use_kl: bool = False
    """Add the KL term (the trainer then keeps a reference policy: the weights RL starts from)."""
    coef: float = 0.001
    """Coefficient of the k3 term (OpenOneRec-RL / verl kl_loss_coef 0.001)."""
    clamp: float = 10.0
    """The per-token k3 value is clamped to [-clamp, clamp] (verl `low_var_kl`)."""

    def validate(self) -> None:
        _require(self.coef >= 0, f"kl.coef must be >= 0, got {self.coef}")
        _require(self.clamp > 0, f"kl.clamp must be > 0, got {self.clamp}")


@dataclass(kw_only=True)
class PpoLossConfig:
    """`ppo_clip` policy loss (verl `compute_policy_loss` vanilla), token-mean; shared by every reading that
    uses it (grpo, grpo_gt, recast with `update: advantages`), so those arms differ only in their advantages."""

    clip_low: float = 0.2
    """Lower clip: ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.28
    """Upper clip (DAPO clip-higher; OpenOneRec-RL clip_ratio_high 0.28): ratio is clipped at 1 + clip_high."""
    dual_clip_c: float | None = 3.0
    """Dual-clip constant for negative advantages (verl default 3.0); null disables it. Must be > 1."""

    def validate(self) -> None:
        _require(0 <= self.clip_low < 1, f"clip_low must be in [0, 1), got {self.clip_low}")
        _require(self.clip_high >= 0, f"clip_high must be >= 0, got {self.clip_high}")
        _require(self.dual_clip_c is None or self.dual_clip_c > 1, f"dual_clip_c must be > 1 or null, got {self.dual_clip_c}")


@dataclass(kw_only=True)
class GrpoConfig:
    """`grpo` builder: group-normalized advantages on every sampled candidate (OpenOneRec-RL / verl).

    Also read by `grpo_gt` (GRPO + a teacher-forced NLL on the ground truth of groups without a hit), the
    control that isolates ReCast's contrast from its injection of the ground truth.
    """

    std: Literal["unbiased", "biased", "none"] = "unbiased"
    """Group std in A = (r - mean)/(std + eps): `unbiased` = torch.std (verl), `biased` = population std,
    `none` = no division (Dr. GRPO)."""
    epsilon: float = 1e-6
    """eps in the advantage denominator."""
    positive_threshold: float = 1.0
    """Reward at or above which a candidate counts as positive (statistics only)."""
    negative_threshold: float = 0.0
    """Reward at or below which a candidate counts as negative (statistics only)."""
    gt_nll_coef: float = 1.0
    """`grpo_gt` only: weight of the ground-truth row's teacher-forced NLL, per token, in the same token-mean
    as the PPO term (1.0 = the row counts like a sampled row with advantage 1 at ratio 1)."""
    gt_target: Literal["first", "policy_best"] = "first"
    """`grpo_gt` only: which target item is injected (as ReCast's `anchor_target`)."""

    def validate(self) -> None:
        _require(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
        _require(self.negative_threshold < self.positive_threshold, "negative_threshold must be < positive_threshold")
        _require(self.gt_nll_coef >= 0, f"gt_nll_coef must be >= 0, got {self.gt_nll_coef}")


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
    normalize: Literal["pairs", "tokens"] = "pairs"
    """Denominator of the step loss: `pairs` = mean over pairs of sequence-sum losses; `tokens` = divided by
    the counted tokens of the rows (token-mean, like GRPO's ppo_clip), which puts the pair term and the KL term
    on GRPO's per-token scale (gradient scales of each reading: docs/signal.md)."""

    def validate(self) -> None:
        _require(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _require(self.anchor_nll_coef >= 0, f"anchor_nll_coef must be >= 0, got {self.anchor_nll_coef}")
        _require(0 <= self.clip_low < 1 and self.clip_high >= 0, "clip_low must be in [0, 1) and clip_high >= 0")


@dataclass(kw_only=True)
class RecastAdvantagesConfig:
    """`recast` with `update: advantages`: contrastive advantages carried into the shared `ppo_clip` loss.

    Per pair p = (positive, negative j) with selection scores s (sequence log-probs):
        a_p = c * sigmoid(margin - beta (s+ - s-_j))   (magnitude `margin`: the pair's logistic-loss weight)
        a_p = c                                       (magnitude `constant`)
    times the pair weight (`anchor_weight` for a repaired positive). A[positive] = sum_p a_p,
    A[negative j] = -negative_scale * a_p. Other rows get no advantage (there are none).
    """

    magnitude: Literal["margin", "constant"] = "margin"
    """`margin`: a = c * sigmoid(margin - beta (s+ - s-)), so pairs already separated by the margin fade out;
    `constant`: a = c."""
    scale: float = 1.0
    """c, the advantage scale (c = beta makes the first on-policy gradient equal to the contrast loss's with
    `normalize: tokens`, see docs/signal.md)."""
    beta: float = 1.0
    """beta of the margin-focused magnitude."""
    margin: float = 1.0
    """margin (nats) of the margin-focused magnitude."""
    negative_scale: float = 1.0
    """Multiplies the negatives' advantages (CARE-style negative-only down-scaling when < 1; 1 = symmetric)."""

    def validate(self) -> None:
        _require(self.scale > 0 and self.beta > 0, "advantages.scale and advantages.beta must be > 0")
        _require(self.negative_scale >= 0, f"advantages.negative_scale must be >= 0, got {self.negative_scale}")


@dataclass(kw_only=True)
class RecastConfig:
    """`recast` builder: repair groups without a full hit, then contrast strongest positive vs hardest negative."""

    positive_threshold: float = 1.0
    """Reward at or above which a candidate is a positive (hit reward: a hit)."""
    negative_threshold: float = 0.0
    """Reward at or below which a candidate is a negative (hit reward: a miss)."""
    repair: bool = True
    """Give a group with no full hit (no candidate is a target item) the ground-truth target as a
    teacher-forced ANCHOR positive; with graded rewards this includes groups with partial credit only."""
    anchor_target: Literal["first", "policy_best"] = "first"
    """With several targets: the first one, or the one the current policy scores highest (needs score_fn)."""
    anchor_weight: float = 1.0
    """Weight of pairs (and of the optional NLL term) whose positive is a repaired anchor."""
    num_negatives: int = 1
    """k hardest negatives per group (one pair each), distinct items; 1 = the single hardest."""
    no_negative: Literal["skip", "lowest_reward"] = "skip"
    """Group with a sampled positive but no negative: skip it, or contrast against its lowest-reward
    non-target member (ties: highest log-prob), never another target item. (A repaired group always
    falls back to that partner when it has no negative.)"""
    hardest_by: Literal["rollout", "actor"] = "rollout"
    """Scores that rank candidates (hardest negative, strongest positive tie-break, the margin magnitude):
    `rollout` = the engine's log-probs (free); `actor` = the actor's forward-only log-probs of all B*G
    candidates (one extra forward of the whole rollout per step; cost in docs/signal.md)."""
    update: Literal["contrast_loss", "advantages"] = "contrast_loss"
    """How the selected rows train the actor: `contrast_loss` = the pairwise loss below; `advantages` =
    +a / -a advantages in the shared `signal.ppo` loss (KL and token-mean as GRPO)."""
    advantages: RecastAdvantagesConfig = field(default_factory=RecastAdvantagesConfig)
    """Magnitudes for `update: advantages`."""
    loss: ContrastLossConfig = field(default_factory=ContrastLossConfig)
    """The contrastive loss for `update: contrast_loss`."""

    def validate(self) -> None:
        _require(self.negative_threshold < self.positive_threshold, "negative_threshold must be < positive_threshold")
        _require(self.anchor_weight >= 0, f"anchor_weight must be >= 0, got {self.anchor_weight}")
        _require(self.num_negatives >= 1, f"num_negatives must be >= 1, got {self.num_negatives}")
        self.advantages.validate()
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
    """Which builder turns rewarded rollouts into the actor's update batch, and its settings.

    `ppo` and `kl` are shared: every builder's batch gets the same KL term, and every `ppo_clip` reading
    the same clip settings, so arms one `builder=` (or `recast.update=`) override apart differ in nothing else.
    """

    builder: Literal["grpo", "grpo_gt", "recast"] = "recast"
    """Registered signal builder (recast_mcore/signal/): `grpo`, `grpo_gt` (GRPO + ground-truth NLL control,
    settings in `grpo`), `recast`."""
    kl: KlConfig = field(default_factory=KlConfig)
    """KL-to-reference term added to every builder's loss."""
    ppo: PpoLossConfig = field(default_factory=PpoLossConfig)
    """The `ppo_clip` loss of grpo, grpo_gt and recast `update: advantages`."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """Settings of the `grpo` and `grpo_gt` builders."""
    recast: RecastConfig = field(default_factory=RecastConfig)
    """Settings of the `recast` builder."""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    """DAPO dynamic sampling applied to rollouts before the builder."""

    def validate(self) -> None:
        self.kl.validate()
        self.ppo.validate()
