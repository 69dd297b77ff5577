"""Count baselines on the validation split: how learnable the data is and how sparse hits are.

  popularity: score_u(j) = pop(j) = training occurrences of item j
  markov:     score_u(j) = T[last_u, j] + pop(j) / (max pop + 1)
              T[i, j] = #(i directly followed by j in a training sequence); last_u = the user's last
              training item; the popularity term only breaks ties (it is < 1).
Items already in the user's history are excluded; the top-10 are scored with
``recast_mcore.eval.metrics.ranking_metrics`` against the validation targets (Pass@1, Recall@10).
"""

from __future__ import annotations

import numpy as np
import torch

from recast_mcore.eval.metrics import ranking_metrics

TOP_K = 10
USER_BATCH = 256


def _transition_matrix(train: list[list[int]], num_items: int) -> torch.Tensor:
    src = np.fromiter((s[i] for s in train for i in range(len(s) - 1)), dtype=np.int64)
    dst = np.fromiter((s[i + 1] for s in train for i in range(len(s) - 1)), dtype=np.int64)
    return torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([src, dst])), torch.ones(src.shape[0]), (num_items, num_items), check_invariants=True
    ).coalesce()


def _rank(scores: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    """scores [b, N] -> top-K item ids [b, K] with history items excluded."""
    rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    cols = torch.tensor([i for h in histories for i in h], dtype=torch.long)
    scores = scores.clone()
    scores[rows, cols] = float("-inf")
    return scores.topk(min(TOP_K, scores.shape[1]), dim=1).indices


def count_baselines(train: list[list[int]], valid: list[list[int]], num_items: int) -> dict[str, dict[str, float]]:
    """``{"popularity": {...}, "markov": {...}}`` with pass@1, recall@10, ndcg@10 on the validation targets."""
    pop = torch.zeros(num_items).index_add_(0, torch.tensor([i for s in train for i in s]), torch.ones(sum(map(len, train))))
    tie_break = pop / (pop.max() + 1)
    transitions = _transition_matrix(train, num_items)
    ranked = {"popularity": [], "markov": []}
    for start in range(0, len(train), USER_BATCH):
        hist = train[start : start + USER_BATCH]
        ranked["popularity"].append(_rank(pop.expand(len(hist), -1), hist))
        last = torch.tensor([h[-1] for h in hist])
        scores = transitions.index_select(0, last).to_dense() + tie_break
        ranked["markov"].append(_rank(scores, hist))
    out = {}
    for name, parts in ranked.items():
        metrics = ranking_metrics(torch.cat(parts), valid, [1, TOP_K])
        out[name] = {key: round(metrics[key], 4) for key in ("pass@1", f"recall@{TOP_K}", f"ndcg@{TOP_K}")}
    return out
