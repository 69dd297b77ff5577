"""Ranking metrics over ranked item lists and target sets (pure torch).

Inputs, for U users:
  ranked:  LongTensor[U, R]  item ids, best first; -1 pads a list shorter than R (never a hit).
           Items in one row must be distinct (beam search over a trie returns distinct items).
  targets: list of U non-empty lists of item ids (the next item, or the next-k target set S_u).

Definitions (per user u, cut-off K, hits h_i = 1[ranked[u, i] in S_u], i = 1..K):
  Pass@K   = max_{i<=K} h_i                       (at least one target in the top K; Pass@1 = top-1 correct)
  Recall@K = sum_{i<=K} h_i / |S_u|
  NDCG@K   = DCG@K / IDCG@K,  DCG@K = sum_{i<=K} h_i / log2(i + 1),
             IDCG@K = sum_{i<=min(|S_u|, K)} 1 / log2(i + 1)
Each reported number is the mean over users. With |S_u| = 1, Recall@K = Pass@K (= HR@K).
"""

from __future__ import annotations

import torch


def _check_inputs(ranked: torch.Tensor, targets: list[list[int]]) -> None:
    if ranked.dim() != 2:
        raise ValueError(f"ranked must be [U, R], got shape {tuple(ranked.shape)}")
    if len(targets) != ranked.shape[0]:
        raise ValueError(f"targets has {len(targets)} users but ranked has {ranked.shape[0]} rows")
    if any(len(t) == 0 for t in targets):
        raise ValueError("every user needs at least one target item")
    valid = ranked >= 0
    sorted_rows, _ = torch.sort(torch.where(valid, ranked, -1 - torch.arange(ranked.shape[1])), dim=1)
    if (sorted_rows[:, 1:] == sorted_rows[:, :-1]).any():
        raise ValueError("ranked lists must not repeat an item within a row")


def hit_matrix(ranked: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """BoolTensor[U, R]: ``hits[u, i]`` is True when ``ranked[u, i]`` is in the target set of user u."""
    _check_inputs(ranked, targets)
    width = max(len(t) for t in targets)
    padded = torch.full((len(targets), width), -2, dtype=torch.long)
    for u, t in enumerate(targets):
        padded[u, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return (ranked.long().unsqueeze(-1) == padded.unsqueeze(1)).any(-1) & (ranked >= 0)


def _num_targets(targets: list[list[int]]) -> torch.Tensor:
    return torch.tensor([len(set(t)) for t in targets], dtype=torch.float64)


def pass_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """FloatTensor[U]: 1.0 when any of the top-k items is a target."""
    return hits[:, :k].any(dim=1).double()


def recall_at_k(hits: torch.Tensor, num_targets: torch.Tensor, k: int) -> torch.Tensor:
    """FloatTensor[U]: fraction of each user's targets found in the top-k."""
    return hits[:, :k].double().sum(dim=1) / num_targets


def ndcg_at_k(hits: torch.Tensor, num_targets: torch.Tensor, k: int) -> torch.Tensor:
    """FloatTensor[U]: binary-relevance NDCG@k (see the module docstring)."""
    top = hits[:, :k].double()
    discounts = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    dcg = (top * discounts).sum(dim=1)
    ideal_discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ideal_len = num_targets.clamp(max=k).long()
    idcg = torch.cumsum(ideal_discounts, 0)[ideal_len - 1]
    return dcg / idcg


def ranking_metrics(ranked: torch.Tensor, targets: list[list[int]], ks: list[int]) -> dict[str, float]:
    """Mean Pass@K, Recall@K, NDCG@K over users for every K in ``ks``.

    Keys: ``pass@{K}``, ``recall@{K}``, ``ndcg@{K}``. A K larger than the list length R scores the
    whole list (a catalog smaller than K cannot fill it).
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")
    hits = hit_matrix(ranked, targets)
    num_targets = _num_targets(targets)
    out: dict[str, float] = {}
    for k in ks:
        out[f"pass@{k}"] = pass_at_k(hits, k).mean().item()
        out[f"recall@{k}"] = recall_at_k(hits, num_targets, k).mean().item()
        out[f"ndcg@{k}"] = ndcg_at_k(hits, num_targets, k).mean().item()
    return out
