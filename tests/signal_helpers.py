"""Small constructors shared by the signal tests (not a test module)."""

from __future__ import annotations

import torch

from recast_mcore.config.signal import ContrastLossConfig, PpoLossConfig
from recast_mcore.signal.batch import Role, UpdateBatch


def make_batch(
    old_logprobs: torch.Tensor,
    *,
    group_index: list[int],
    advantages: list[float] | None = None,
    roles: list[int] | None = None,
    weights: list[float] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    pair_weights: list[float] | None = None,
    loss: str = "ppo_clip",
    params=None,
    ref_logprobs: torch.Tensor | None = None,
) -> UpdateBatch:
    n, t = old_logprobs.shape
    pairs_t = torch.tensor(pairs or [], dtype=torch.int64).reshape(-1, 2)
    return UpdateBatch(
        prompt_ids=[[1, 4 + i] for i in range(n)],
        responses=torch.arange(n * t, dtype=torch.int64).reshape(n, t) % 7 + 4,
        old_logprobs=old_logprobs.float(),
        advantages=torch.tensor(advantages or [0.0] * n, dtype=torch.float32),
        weights=torch.tensor(weights or [1.0] * n, dtype=torch.float32),
        roles=torch.tensor(roles or [int(Role.SAMPLED)] * n, dtype=torch.int64),
        group_index=torch.tensor(group_index, dtype=torch.int64),
        token_mask=torch.ones(n, t, dtype=torch.bool),
        pairs=pairs_t,
        pair_weights=torch.tensor(pair_weights or [1.0] * pairs_t.shape[0], dtype=torch.float32),
        loss_name=loss,
        loss_params=params if params is not None else (PpoLossConfig() if loss == "ppo_clip" else ContrastLossConfig()),
        ref_logprobs=ref_logprobs,
    )
