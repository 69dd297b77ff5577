"""Count baselines on the validation and test splits: how learnable the data is and how sparse hits are.

  popularity: score_u(j) = pop(j) = training occurrences of item j
  markov:     score_u(j) = T[last_u, j] + pop(j) / (max pop + 1)
              T[i, j] = #(i directly followed by j in a training sequence); last_u = the last item of
              the user's history; the popularity term only breaks ties (it is < 1).
Counts come from the TRAINING sequences only (what the models are trained on). The history of a user
is the split's (valid: train; test: train + valid, as in data/dataset.py). Items already in the history
are excluded; the top-10 are scored with ``recast_mcore.eval.metrics.ranking_metrics`` against the
split's targets (Pass@1, Recall@10, NDCG@10).
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


def count_baselines(
    train: list[list[int]], targets: list[list[int]], num_items: int, histories: list[list[int]] | None = None
) -> dict[str, dict[str, float]]:
    """``{"popularity": {...}, "markov": {...}}``: pass@1, recall@10, ndcg@10 on ``targets``.

    ``histories`` (default: ``train``, i.e. the validation split) are what each user has seen before the
    targets; counts always come from ``train``.
    """
    histories = train if histories is None else histories
    pop = torch.zeros(num_items).index_add_(0, torch.tensor([i for s in train for i in s]), torch.ones(sum(map(len, train))))
    tie_break = pop / (pop.max() + 1)
    transitions = _transition_matrix(train, num_items)
    ranked = {"popularity": [], "markov": []}
    for start in range(0, len(histories), USER_BATCH):
        hist = histories[start : start + USER_BATCH]
        ranked["popularity"].append(_rank(pop.expand(len(hist), -1), hist))
        last = torch.tensor([h[-1] for h in hist])
        scores = transitions.index_select(0, last).to_dense() + tie_break
        ranked["markov"].append(_rank(scores, hist))
    out = {}
    for name, parts in ranked.items():
        metrics = ranking_metrics(torch.cat(parts), targets, [1, TOP_K])
        out[name] = {key: round(metrics[key], 4) for key in ("pass@1", f"recall@{TOP_K}", f"ndcg@{TOP_K}")}
    return out


def split_baselines(train: list[list[int]], valid: list[list[int]], test: list[list[int]], num_items: int) -> dict[str, dict]:
    """``{"valid": count_baselines(...), "test": count_baselines(...)}`` with the histories of data/dataset.py."""
    return {
        "valid": count_baselines(train, valid, num_items),
        "test": count_baselines(train, test, num_items, histories=[t + v for t, v in zip(train, valid)]),
    }
