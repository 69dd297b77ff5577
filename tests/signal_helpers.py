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


# ---- rollout groups over a toy catalog -------------------------------------------------------
from recast_mcore.rollout.types import RolloutGroups  # noqa: E402

EOS = 2
ITEM_LEN = 3
NUM_ITEMS = 12
# item i -> tokens (<a_{i%2}>, <b_{i%3}>, <c_i>) with ids 4 + offset + code (a: 2 codes, b: 3 codes, c: 12 codes)
ITEM_TOKENS = torch.tensor([[4 + i % 2, 6 + i % 3, 9 + i] for i in range(NUM_ITEMS)], dtype=torch.int64)


def item_response(item_id: int) -> torch.Tensor:
    """[T] item tokens + EOS."""
    return torch.cat([ITEM_TOKENS[item_id], torch.tensor([EOS])])


def make_groups(item_ids: list[list[int]], seq_logprobs: list[list[float]], targets: list[list[int]]) -> RolloutGroups:
    """B x G groups; each candidate's sequence log-prob is spread evenly over its item tokens (EOS term 0)."""
    ids = torch.tensor(item_ids, dtype=torch.int64)
    b, g = ids.shape
    responses = torch.stack([torch.stack([item_response(i) for i in row]) for row in item_ids])
    per_token = torch.tensor(seq_logprobs, dtype=torch.float32)[:, :, None] / ITEM_LEN
    token_logprobs = torch.cat([per_token.expand(b, g, ITEM_LEN), torch.zeros(b, g, 1)], dim=2)
    return RolloutGroups(
        prompt_ids=[[1, 4 + k] for k in range(b)],
        responses=responses,
        token_logprobs=token_logprobs.contiguous(),
        item_ids=ids,
        targets=targets,
        policy_version=0,
        num_sampled=b * g,
    )


def toy_score_fn(calls: list | None = None):
    """score_fn giving item i the sequence log-prob -(1 + i / 10) (spread over item tokens, EOS 0)."""

    def score(prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append((prompt_ids, responses.clone()))
        item = responses[:, ITEM_LEN - 1] - 9  # <c_i> token -> i
        per_token = -(1.0 + item.float() / 10.0) / ITEM_LEN
        out = per_token[:, None].expand(-1, ITEM_LEN)
        return torch.cat([out, torch.zeros(responses.shape[0], 1)], dim=1)

    return score
