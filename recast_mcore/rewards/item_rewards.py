"""The item rewards: exact hit (default) and graded semantic-ID prefix match."""

from __future__ import annotations

import torch

from recast_mcore.config.signal import RewardConfig
from recast_mcore.rewards.registry import padded_targets, register_reward


@register_reward("hit")
def hit_reward(item_ids: torch.Tensor, targets: list[list[int]], item_tokens: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """r[b, g] = 1 if item_ids[b, g] is in targets[b] else 0.   item_ids [B, G] -> [B, G] float32."""
    ids, valid = padded_targets(targets)  # [B, K]
    match = (item_ids[:, :, None] == ids[:, None, :]) & valid[:, None, :]  # [B, G, K]
    return match.any(dim=-1).to(torch.float32)


@register_reward("prefix_match")
def prefix_match_reward(
    item_ids: torch.Tensor, targets: list[list[int]], item_tokens: torch.Tensor, cfg: RewardConfig
) -> torch.Tensor:
    """Graded credit for the leading semantic-ID levels shared with the closest target.

    c = item_tokens[item_ids] [B, G, L], t = item_tokens[targets] [B, K, L], weights w [L]
    (``cfg.prefix_match.level_weights``, uniform when empty):
        m[b, g, k, l] = prod_{j <= l} 1[c[b, g, j] == t[b, k, j]]     (prefix still matching at level l)
        r[b, g]       = max_k sum_l w_l m[b, g, k, l] / sum_l w_l      in [0, 1]; 1 iff the item is a target.
    Candidates with item id -1 (not a catalog item) get 0.
    """
    item_len = item_tokens.shape[1]
    weights = _level_weights(cfg, item_len)
    ids, valid = padded_targets(targets)
    cand = item_tokens[item_ids.clamp_min(0)]  # [B, G, L]
    tgt = item_tokens[ids]  # [B, K, L]
    same = cand[:, :, None, :] == tgt[:, None, :, :]  # [B, G, K, L]
    prefix = torch.cumprod(same.to(torch.int64), dim=-1).to(torch.float32)
    credit = (prefix * weights).sum(-1) / weights.sum()  # [B, G, K]
    credit = credit.masked_fill(~valid[:, None, :], 0.0).max(dim=-1).values
    return credit.masked_fill(item_ids < 0, 0.0)


def _level_weights(cfg: RewardConfig, item_len: int) -> torch.Tensor:
    given = cfg.prefix_match.level_weights
    if not given:
        return torch.ones(item_len, dtype=torch.float32)
    if len(given) != item_len:
        raise ValueError(f"reward.prefix_match.level_weights has {len(given)} entries, items have {item_len} tokens")
    return torch.tensor(given, dtype=torch.float32)
