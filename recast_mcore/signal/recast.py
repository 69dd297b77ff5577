"""`recast` builder: repair-then-contrast (ReCast, arXiv 2604.22169; exact formulas not public, see docs/signal.md).

Shapes: rewards r [B, G]; selection scores s [B, G] = sum over the T tokens of the rollout log-probs
(``hardest_by: rollout``) or of the actor's forward-only log-probs of every candidate (``hardest_by: actor``).
Per group b, with P = {g: r >= positive_threshold}, Neg = {g: r <= negative_threshold, not a target item,
first occurrence of its item}:
  1. positive. Repair: a group with NO FULL HIT (no candidate is a target item; with graded rewards that
     includes groups with partial credit only) gets an ANCHOR (if ``repair``): a ground-truth target,
     teacher-forced (item tokens + EOS, not sampled), chosen by ``anchor_target`` (signal/anchors.py); its
     old log-probs and score come from ``score_fn``. Otherwise the strongest sampled positive
     g+ = argmax_{g in P} (r, then s). A group with neither sends nothing.
  2. negatives: the k = ``num_negatives`` members of Neg with the highest s (hardest), distinct items.
     No negative: a repaired group, or (``no_negative: lowest_reward``) a group with a sampled positive,
     takes the lowest-reward member that is not a target item (nor the positive's item), ties by highest s;
     ``skip`` drops a sampled-positive group. A target item is never a negative.
  3. rows: [positive, negative_1 .. negative_m] (m <= k); pairs (positive, negative_j).
     ``update: contrast_loss``: loss ``pairwise_contrast``; pair weight and the anchor row's weight =
     ``anchor_weight`` for a repaired positive, else 1; advantages 0.
     ``update: advantages``: loss ``ppo_clip`` (shared ``signal.ppo``), row weights 1, per pair
     a_p = v_p c sigmoid(margin - beta (s+ - s-_p)) (or v_p c), v_p the pair weight;
     A[positive] = sum_p a_p, A[negative_p] = -negative_scale a_p.
Update width <= 1 + k. Everything is tensor ops over [B, G] / [B, 1 + k]: no Python loop over groups.
"""

from __future__ import annotations

import torch

from recast_mcore.config.signal import RecastConfig
from recast_mcore.rewards.registry import target_hits
from recast_mcore.signal.anchors import first_occurrence, ground_truth_rows
from recast_mcore.signal.batch import Role, UpdateBatch
from recast_mcore.signal.inputs import SignalInputs
from recast_mcore.signal.registry import register_builder
from recast_mcore.signal.stats import SignalStats, base_stats, frac, hardest_negatives, lexicographic_argmax, strongest_positive


def selection_logprobs(inputs: SignalInputs, hardest_by: str) -> torch.Tensor:
    """[B, G, T] token log-probs that rank candidates: the rollout's, or the actor's (one score_fn call)."""
    g = inputs.groups
    if hardest_by == "rollout":
        return g.token_logprobs.float()
    if hardest_by != "actor":
        raise ValueError(f"unknown hardest_by '{hardest_by}'; valid: actor, rollout")
    b, n, t = g.responses.shape
    prompts = [p for p in g.prompt_ids for _ in range(n)]
    return inputs.score(prompts, g.responses.reshape(b * n, t)).reshape(b, n, t)


def select_negatives(r: torch.Tensor, seq: torch.Tensor, item_ids: torch.Tensor, is_target: torch.Tensor,
                     pos_col: torch.Tensor, fallback_ok: torch.Tensor, pos_is_sampled: torch.Tensor,
                     cfg: RecastConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns [B, k], valid [B, k]) of each group's negatives (module doc, step 2).

    fallback_ok [B]: groups that take the lowest-reward partner when they have no negative;
    pos_is_sampled [B]: the positive is a sampled column (its item is excluded from the partner).
    """
    distinct = first_occurrence(item_ids) & ~is_target
    cols, valid = hardest_negatives(seq, (r <= cfg.negative_threshold) & distinct, cfg.num_negatives)
    rows = torch.arange(r.shape[0])
    pos_item = item_ids[rows, pos_col]
    allowed = distinct & ~(pos_is_sampled[:, None] & (item_ids == pos_item[:, None]))
    partner = lexicographic_argmax(-r, seq, allowed)
    use = fallback_ok & ~valid[:, 0] & allowed.any(dim=1)
    cols[:, 0] = torch.where(use, partner, cols[:, 0])
    valid[:, 0] |= use
    return cols, valid


@register_builder("recast")
def build_recast(inputs: SignalInputs, cfg: RecastConfig) -> UpdateBatch:
    """Repaired anchor / strongest positive vs hardest negative(s) per group (module doc)."""
    g = inputs.groups
    b, _, t = g.responses.shape
    r = inputs.rewards.float()
    seq = selection_logprobs(inputs, cfg.hardest_by).sum(dim=2)
    is_target = target_hits(g.item_ids, g.targets)
    repair = ~is_target.any(dim=1) & cfg.repair  # [B]
    positive = r >= cfg.positive_threshold
    sampled_pos = ~repair & positive.any(dim=1)
    pos_col = strongest_positive(r, seq, positive)
    fallback_ok = repair | (sampled_pos & (cfg.no_negative == "lowest_reward"))
    neg_cols, neg_valid = select_negatives(r, seq, g.item_ids, is_target, pos_col, fallback_ok, sampled_pos, cfg)
    active = (repair | sampled_pos) & neg_valid.any(dim=1)
    anchored = active & repair
    anchor_resp, anchor_lp = ground_truth_rows(inputs, anchored.nonzero().flatten(), cfg.anchor_target)
    slots = _Slots.build(inputs, r, seq, pos_col, neg_cols, anchored, anchor_resp, anchor_lp)
    keep = torch.cat([active[:, None], active[:, None] & neg_valid], dim=1)  # [B, 1 + k]
    pair_w = torch.where(anchored, cfg.anchor_weight, 1.0)  # [B]
    batch = slots.to_batch(keep, pair_w, cfg, t)
    batch.stats = _recast_stats(inputs, cfg, batch, num_repaired=int(anchored.sum()))
    return batch


class _Slots:
    """Per group, slot 0 = positive and slots 1..k = negatives ([B, 1 + k] tensors), flattened by ``keep``."""

    def __init__(self, **fields: torch.Tensor) -> None:
        self.__dict__.update(fields)

    @classmethod
    def build(cls, inputs: SignalInputs, r, seq, pos_col, neg_cols, anchored, anchor_resp, anchor_lp) -> _Slots:
        g = inputs.groups
        rows = torch.arange(r.shape[0])
        pos_resp, pos_lp = g.responses[rows, pos_col].clone(), g.token_logprobs[rows, pos_col].float()
        pos_seq, pos_r = seq[rows, pos_col].clone(), r[rows, pos_col].clone()
        idx = anchored.nonzero().flatten()
        pos_resp[idx], pos_lp[idx], pos_seq[idx], pos_r[idx] = anchor_resp, anchor_lp, anchor_lp.sum(dim=1), 1.0
        neg_resp = torch.gather(g.responses, 1, neg_cols[:, :, None].expand(-1, -1, g.responses.shape[2]))
        neg_lp = torch.gather(g.token_logprobs.float(), 1, neg_cols[:, :, None].expand(-1, -1, g.responses.shape[2]))
        k = neg_cols.shape[1]
        pos_role = torch.where(anchored, int(Role.ANCHOR), int(Role.POSITIVE))
        return cls(
            responses=torch.cat([pos_resp[:, None], neg_resp], dim=1),
            old_logprobs=torch.cat([pos_lp[:, None], neg_lp], dim=1),
            scores=torch.cat([pos_seq[:, None], torch.gather(seq, 1, neg_cols)], dim=1),
            rewards=torch.cat([pos_r[:, None], torch.gather(r, 1, neg_cols)], dim=1),
            roles=torch.cat([pos_role[:, None], torch.full((r.shape[0], k), int(Role.NEGATIVE))], dim=1),
            anchored=anchored,
            prompt_ids=g.prompt_ids,
        )

    def to_batch(self, keep: torch.Tensor, pair_w: torch.Tensor, cfg: RecastConfig, t: int) -> UpdateBatch:
        b, width = keep.shape
        flat = keep.reshape(-1)
        row_of = (torch.cumsum(flat.long(), 0) - 1).view(b, width)
        pair_mask = keep[:, 1:]  # [B, k]
        pairs = torch.stack([row_of[:, :1].expand_as(pair_mask), row_of[:, 1:]], dim=2)[pair_mask]
        pair_weights = pair_w[:, None].expand_as(pair_mask)[pair_mask]
        group = torch.arange(b)[:, None].expand(b, width).reshape(-1)[flat]
        pos_weight = torch.where(self.anchored, cfg.anchor_weight, 1.0)
        weights = torch.cat([pos_weight[:, None], torch.ones(b, width - 1)], dim=1)
        advantages = torch.zeros(b, width)
        loss_name, loss_params = "pairwise_contrast", cfg.loss
        if cfg.update == "advantages":
            a = contrastive_advantages(self.scores[:, :1] - self.scores[:, 1:], pair_w, cfg) * pair_mask
            advantages = torch.cat([a.sum(dim=1, keepdim=True), -cfg.advantages.negative_scale * a], dim=1)
            weights = torch.ones(b, width)
            loss_name, loss_params = "ppo_clip", None  # the shared signal.ppo
        n = int(flat.sum())
        return UpdateBatch(
            prompt_ids=[self.prompt_ids[i] for i in group.tolist()],
            responses=self.responses.reshape(b * width, t)[flat],
            old_logprobs=self.old_logprobs.reshape(b * width, t)[flat],
            advantages=advantages.reshape(-1)[flat],
            weights=weights.reshape(-1)[flat],
            roles=self.roles.reshape(-1)[flat],
            group_index=group,
            token_mask=torch.ones(n, t, dtype=torch.bool),
            pairs=pairs.reshape(-1, 2),
            pair_weights=pair_weights.float(),
            loss_name=loss_name,
            loss_params=loss_params,
            rewards=self.rewards.reshape(-1)[flat],
        )


def contrastive_advantages(margin_gap: torch.Tensor, pair_w: torch.Tensor, cfg: RecastConfig) -> torch.Tensor:
    """[B, k] a_p = v_p c sigmoid(margin - beta (s+ - s-_p)) (``margin``) or v_p c (``constant``);
    margin_gap = s+ - s- [B, k], pair weights v [B]."""
    adv = cfg.advantages
    if adv.magnitude == "margin":
        a = adv.scale * torch.sigmoid(adv.margin - adv.beta * margin_gap)
    else:
        a = torch.full_like(margin_gap, adv.scale)
    return a * pair_w[:, None]


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
