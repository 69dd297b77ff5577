"""Reward registry: every reward has ONE signature (pure torch).

    reward_fn(item_ids: LongTensor[B, G], targets: list[list[int]], item_tokens: LongTensor[I, L],
              cfg: RewardConfig) -> FloatTensor[B, G]

``item_ids`` are catalog indices of the candidates (-1 = not a catalog item, reward 0),
``targets`` the B non-empty ground-truth target sets, ``item_tokens`` the semantic-ID token table
(``ItemVocab.item_tokens``: I items x L = item_len tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recast_mcore.config.signal import RewardConfig
from recast_mcore.utils.registry import Registry

RewardFn = Callable[[torch.Tensor, list[list[int]], torch.Tensor, RewardConfig], torch.Tensor]

REWARDS: Registry[RewardFn] = Registry("reward")
register_reward = REWARDS.register
get_reward = REWARDS.get


def compute_rewards(
    item_ids: torch.Tensor, targets: list[list[int]], item_tokens: torch.Tensor, cfg: RewardConfig
) -> torch.Tensor:
    """Check the inputs, then apply the reward named by ``cfg.name``: FloatTensor[B, G]."""
    check_reward_inputs(item_ids, targets, item_tokens)
    return get_reward(cfg.name)(item_ids, targets, item_tokens, cfg)


def check_reward_inputs(item_ids: torch.Tensor, targets: list[list[int]], item_tokens: torch.Tensor) -> None:
    """Raise ``ValueError`` naming what is wrong with the reward inputs."""
    if item_ids.dim() != 2 or item_ids.dtype != torch.int64:
        raise ValueError(f"item_ids must be an int64 [B, G] tensor, got {item_ids.dtype} {tuple(item_ids.shape)}")
    if item_tokens.dim() != 2:
        raise ValueError(f"item_tokens must be [num_items, item_len], got shape {tuple(item_tokens.shape)}")
    num_items = item_tokens.shape[0]
    if len(targets) != item_ids.shape[0]:
        raise ValueError(f"targets has {len(targets)} entries for {item_ids.shape[0]} prompts")
    if item_ids.numel() and (int(item_ids.min()) < -1 or int(item_ids.max()) >= num_items):
        raise ValueError(f"item_ids must be in [-1, {num_items}); got range [{int(item_ids.min())}, {int(item_ids.max())}]")
    for b, tset in enumerate(targets):
        if not tset:
            raise ValueError(f"prompt {b} has an empty target set")
        if min(tset) < 0 or max(tset) >= num_items:
            raise ValueError(f"prompt {b} has a target item outside [0, {num_items}): {tset}")


def padded_targets(targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, K], valid [B, K]) with K the largest target-set size (1 when B = 0); padding ids are 0 and invalid."""
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    k = max(1, int(lengths.max())) if len(targets) else 1
    valid = torch.arange(k)[None, :] < lengths[:, None]
    ids = torch.zeros(len(targets), k, dtype=torch.int64)
    ids[valid] = torch.tensor([x for t in targets for x in t], dtype=torch.int64)
    return ids, valid


def target_hits(item_ids: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """[B, G] bool: candidate item in its prompt's target set (item_ids [B, G]); a full hit."""
    ids, valid = padded_targets(targets)
    return ((item_ids.unsqueeze(-1) == ids.unsqueeze(1)) & valid.unsqueeze(1)).any(-1)
