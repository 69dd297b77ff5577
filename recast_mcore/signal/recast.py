"""`recast` builder: repair-then-contrast (ReCast, arXiv 2604.22169; exact formulas not public, see docs/signal.md).

Shapes: rewards r [B, G]; rollout sequence log-probs s [B, G] (sum over the T tokens).
Per group b, with P = {g: r >= positive_threshold}, Neg = {g: r <= negative_threshold}:
  1. positive: the strongest positive  g+ = argmax_{g in P} (r[b, g], then s[b, g]).
     Repair: if P is empty (and ``repair``), the positive is an ANCHOR: a ground-truth target item,
     teacher-forced (item tokens + EOS, not sampled); ``anchor_target`` = the first target or the
     target with the highest policy score s(y) = sum_t score_fn(x, y)_t. Its old log-probs come from
     ``score_fn`` (the actor's forward-only constrained log-probs).
  2. negatives: the k = ``num_negatives`` hardest negatives, the members of Neg with the highest s.
     If Neg is empty: ``no_negative = skip`` drops the group, ``lowest_reward`` contrasts the member
     with the lowest (r, then s) whose item differs from the positive (for a repaired group: is not a target).
  3. rows: [positive, negative_1 .. negative_k]; pairs (positive, negative_j); pair weight and the
     anchor row's weight = ``anchor_weight`` for a repaired positive, else 1.
A group with no positive (repair off) or no usable negative sends no row. Update width <= 1 + k.
The actor applies ``pairwise_contrast`` (see recast_mcore/signal/losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recast_mcore.config.signal import RecastConfig
from recast_mcore.signal.batch import Role, UpdateBatch
from recast_mcore.signal.inputs import SignalInputs
from recast_mcore.signal.registry import register_builder
from recast_mcore.signal.stats import SignalStats, base_stats, frac, hardest_negatives, lexicographic_argmax, strongest_positive


@dataclass
class _Anchor:
    """A repaired positive of one group."""

    response: torch.Tensor  # [T] int64
    old_logprobs: torch.Tensor  # [T] float32


def select_negatives(inputs: SignalInputs, cfg: RecastConfig, pos_col: torch.Tensor, has_pos: torch.Tensor) -> list[list[int]]:
    """Per group, the candidate columns contrasted as negatives (possibly empty)."""
    r, seq, item_ids = inputs.rewards.float(), inputs.groups.seq_logprobs.float(), inputs.groups.item_ids
    negative = r <= cfg.negative_threshold
    cols, valid = hardest_negatives(seq, negative, cfg.num_negatives)
    chosen = [c[v].tolist() for c, v in zip(cols, valid)]
    if cfg.no_negative == "lowest_reward":
        for b, picked in enumerate(chosen):
            if picked:
                continue
            if bool(has_pos[b]):
                allowed = item_ids[b] != item_ids[b, pos_col[b]]
            else:  # repaired group: anything that is not a target item
                allowed = ~torch.isin(item_ids[b], torch.tensor(inputs.groups.targets[b]))
            if bool(allowed.any()):
                chosen[b] = [int(lexicographic_argmax(-r[b : b + 1], -seq[b : b + 1], allowed[None])[0])]
    return chosen


def make_anchors(inputs: SignalInputs, cfg: RecastConfig, groups_to_repair: list[int]) -> dict[int, _Anchor]:
    """Teacher-forced target anchors for ``groups_to_repair``, scored by ``score_fn`` in one call."""
    if not groups_to_repair:
        return {}
    targets = inputs.groups.targets
    options = {b: (targets[b] if cfg.anchor_target == "policy_best" else targets[b][:1]) for b in groups_to_repair}
    owners = [b for b in groups_to_repair for _ in options[b]]
    items = torch.tensor([t for b in groups_to_repair for t in options[b]], dtype=torch.int64)
    eos = torch.full((items.numel(), 1), inputs.eos_id, dtype=torch.int64)
    responses = torch.cat([inputs.item_tokens[items].to(torch.int64), eos], dim=1)
    logprobs = inputs.score([inputs.groups.prompt_ids[b] for b in owners], responses)
    scores = logprobs.sum(dim=1)
    best: dict[int, int] = {}  # group -> row of its highest-scoring option (ties: first target)
    for row, b in enumerate(owners):
        if b not in best or scores[row] > scores[best[b]]:
            best[b] = row
    return {b: _Anchor(responses[row], logprobs[row]) for b, row in best.items()}


@register_builder("recast")
def build_recast(inputs: SignalInputs, cfg: RecastConfig) -> UpdateBatch:
    """Repaired positive/strongest positive vs hardest negative(s) per group, loss ``pairwise_contrast``."""
    groups = inputs.groups
    r, seq = inputs.rewards.float(), groups.seq_logprobs.float()
    positive = r >= cfg.positive_threshold
    has_pos = positive.any(dim=1)
    pos_col = strongest_positive(r, seq, positive)
    negatives = select_negatives(inputs, cfg, pos_col, has_pos)
    to_repair = [b for b in range(r.shape[0]) if cfg.repair and not has_pos[b] and negatives[b]]
    anchors = make_anchors(inputs, cfg, to_repair)
    rows = _RowCollector()
    for b in range(r.shape[0]):
        if not negatives[b] or (not has_pos[b] and b not in anchors):
            continue
        if b in anchors:
            a = anchors[b]
            pos_row = rows.add(inputs, b, Role.ANCHOR, cfg.anchor_weight, a.response, a.old_logprobs, 1.0)
        else:
            pos_row = rows.add_sampled(inputs, b, int(pos_col[b]), Role.POSITIVE)
        pair_w = cfg.anchor_weight if b in anchors else 1.0
        for col in negatives[b]:
            rows.pairs.append((pos_row, rows.add_sampled(inputs, b, col, Role.NEGATIVE)))
            rows.pair_weights.append(pair_w)
    batch = rows.to_batch(groups.responses.shape[2], cfg)
    batch.stats = _recast_stats(inputs, cfg, batch, num_repaired=len(anchors))
    return batch


class _RowCollector:
    """Accumulates the selected rows and pairs, then builds the UpdateBatch."""

    def __init__(self) -> None:
        self.prompt_ids: list[list[int]] = []
        self.responses: list[torch.Tensor] = []
        self.old_logprobs: list[torch.Tensor] = []
        self.roles: list[int] = []
        self.weights: list[float] = []
        self.groups: list[int] = []
        self.rewards: list[float] = []
        self.pairs: list[tuple[int, int]] = []
        self.pair_weights: list[float] = []

    def add(self, inputs: SignalInputs, b: int, role: Role, weight: float,
            response: torch.Tensor, old_logprobs: torch.Tensor, reward: float) -> int:
        self.prompt_ids.append(inputs.groups.prompt_ids[b])
        self.responses.append(response)
        self.old_logprobs.append(old_logprobs.float())
        self.roles.append(int(role))
        self.weights.append(weight)
        self.groups.append(b)
        self.rewards.append(reward)
        return len(self.roles) - 1

    def add_sampled(self, inputs: SignalInputs, b: int, col: int, role: Role) -> int:
        g = inputs.groups
        return self.add(inputs, b, role, 1.0, g.responses[b, col], g.token_logprobs[b, col], float(inputs.rewards[b, col]))

    def to_batch(self, t: int, cfg: RecastConfig) -> UpdateBatch:
        n = len(self.roles)
        return UpdateBatch(
            prompt_ids=self.prompt_ids,
            responses=torch.stack(self.responses) if n else torch.zeros(0, t, dtype=torch.int64),
            old_logprobs=torch.stack(self.old_logprobs) if n else torch.zeros(0, t),
            advantages=torch.zeros(n),
            weights=torch.tensor(self.weights, dtype=torch.float32),
            roles=torch.tensor(self.roles, dtype=torch.int64),
            group_index=torch.tensor(self.groups, dtype=torch.int64),
            token_mask=torch.ones(n, t, dtype=torch.bool),
            pairs=torch.tensor(self.pairs, dtype=torch.int64).reshape(-1, 2),
            pair_weights=torch.tensor(self.pair_weights, dtype=torch.float32),
            loss_name="pairwise_contrast",
            loss_params=cfg.loss,
            rewards=torch.tensor(self.rewards, dtype=torch.float32),
        )


def _recast_stats(inputs: SignalInputs, cfg: RecastConfig, batch: UpdateBatch, num_repaired: int) -> SignalStats:
    stats = base_stats(inputs, cfg.positive_threshold, cfg.negative_threshold)
    b = inputs.rewards.shape[0]
    present = torch.zeros(b, dtype=torch.bool)
    present[batch.group_index] = True
    stats.num_sequences = batch.num_sequences
    stats.num_pairs = batch.num_pairs
    stats.frac_repaired = num_repaired / b if b else 0.0
    stats.frac_skipped = frac(~present)
    stats.frac_zero_signal = stats.frac_skipped
    stats.update_width = batch.num_sequences / b if b else 0.0
    if batch.num_pairs:
        seq = batch.old_logprobs.sum(dim=1)
        stats.mean_pair_margin = float((seq[batch.pairs[:, 0]] - seq[batch.pairs[:, 1]]).mean())
    return stats
