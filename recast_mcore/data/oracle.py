"""Bayes-optimal reference for the synthetic generator: what a model that knew the world could reach.

The oracle knows everything the generator drew (successor tables, cluster popularity, each user's
latent primary/secondary cluster) and the user's true recorded past. For a target position with
previous recorded item ``p``, latent clusters ``(c1, c2)`` and already-seen set ``S``, one generator
attempt draws item j with (synthetic.py, ``_next_item``)::

    P0(j) = tp * succ(p, j) + (1 - tp) * [ noise / N + (1 - noise) * (0.7 pop_c1(j) + 0.3 pop_c2(j)) ]

    succ(p, j) = sum of successor-slot weights of p whose successor is j,  pop_c = in-cluster Zipf weights.

An attempt that hits ``S`` is redrawn (a step whose 10 attempts all fail records nothing and the next
step draws from the same state), so the next RECORDED item is ``P(j) = P0(j) 1[j not in S] / sum``.
Restricted to the prepared catalog (items that survived the k-core filter; a split target always is
one) and renormalized, that is the exact conditional distribution of the valid/test target when the
target set has one item (k = 1). For k > 1 (the next k recorded items) the membership probabilities
``P(j in next k)`` are estimated by simulating the k steps ``simulations`` times per user.

Expected metrics of the ranking by those probabilities, per user with membership probabilities q_j
sorted descending q_(1) >= q_(2) >= ... (means over users are reported):

    E[Pass@1]   = q_(1)                      (the best any model can do in expectation)
    E[Recall@K] = sum_{i<=K} q_(i) / k
    E[NDCG@K]   = sum_{i<=K} q_(i) / log2(i + 1) / IDCG@K(k)

These are expectations over the generator's randomness, not realized hits, so they are exact (k = 1)
rather than noisy. The oracle also knows the latent clusters, which no model observes, so it is an
upper bound for any model trained on the logs.
"""

from __future__ import annotations

import numpy as np

from recast_mcore.config.data import SyntheticConfig
from recast_mcore.data.synthetic import PRIMARY_CLUSTER_PROB, Simulation, simulate

CUT = 10
ROWS_PER_BATCH = 4096


def _base_probs(cfg: SyntheticConfig, sim: Simulation, users: np.ndarray) -> np.ndarray:
    """[b, N]: the non-transition part (uniform noise + the users' cluster popularity), weight 1 - tp."""
    w = sim.world
    n = cfg.num_items
    pop = np.zeros((cfg.num_clusters, n))
    for c, (members, probs) in enumerate(zip(w.members, w.member_probs)):
        pop[c, members] = probs
    c1, c2 = sim.clusters[users, 0], sim.clusters[users, 1]
    clustered = PRIMARY_CLUSTER_PROB * pop[c1] + (1.0 - PRIMARY_CLUSTER_PROB) * pop[c2]
    return cfg.noise_prob / n + (1.0 - cfg.noise_prob) * clustered


def _successor_probs(sim: Simulation, prev: np.ndarray, n: int) -> np.ndarray:
    """[b, N]: succ(prev_b, j) (repeated successor slots add up)."""
    succ = sim.world.successors[prev]  # [b, S]
    out = np.zeros((prev.shape[0], n))
    rows = np.repeat(np.arange(prev.shape[0]), succ.shape[1])
    np.add.at(out, (rows, succ.reshape(-1)), np.tile(sim.world.successor_probs, prev.shape[0]))
    return out


def next_item_probs(cfg: SyntheticConfig, sim: Simulation, base: np.ndarray, prev: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """[b, N] distribution of the next recorded item (base [b, N], prev [b], seen [b, N] bool)."""
    p = cfg.transition_prob * _successor_probs(sim, prev, cfg.num_items) + (1.0 - cfg.transition_prob) * base
    p = np.where(seen, 0.0, p)
    return p / p.sum(axis=1, keepdims=True)


def _membership(cfg, sim, users, positions, k: int, simulations: int, rng) -> np.ndarray:
    """[b, N] probability that item j is among the k recorded items starting at ``positions`` (exact for k = 1)."""
    n = cfg.num_items
    base = _base_probs(cfg, sim, users)
    prev = np.array([sim.sequences[u][p - 1] for u, p in zip(users, positions)])
    seen = np.zeros((len(users), n), dtype=bool)
    for row, (u, p) in enumerate(zip(users, positions)):
        seen[row, sim.sequences[u][:p]] = True
    if k == 1:
        return next_item_probs(cfg, sim, base, prev, seen)
    rep = np.repeat(np.arange(len(users)), simulations)
    base_r, prev_r, seen_r = base[rep], prev[rep], seen[rep].copy()
    hit = np.zeros_like(seen_r)
    for _ in range(k):
        probs = next_item_probs(cfg, sim, base_r, prev_r, seen_r)
        draws = (probs.cumsum(axis=1) < rng.random((probs.shape[0], 1))).sum(axis=1).clip(max=n - 1)
        hit[np.arange(draws.shape[0]), draws] = True
        seen_r[np.arange(draws.shape[0]), draws] = True
        prev_r = draws
    return hit.reshape(len(users), simulations, n).mean(axis=1)


def expected_metrics(q: np.ndarray, k: int, cut: int = CUT) -> dict[str, float]:
    """Expected Pass@1, Recall@cut, NDCG@cut of ranking by q [U, N] (module docstring); means over users."""
    top = -np.sort(-q, axis=1)[:, :cut]
    disc = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    idcg = disc[: min(k, cut)].sum()
    return {
        "pass@1": float(top[:, 0].mean()),
        f"recall@{cut}": float((top.sum(axis=1) / k).mean()),
        f"ndcg@{cut}": float(((top * disc).sum(axis=1) / idcg).mean()),
    }


def oracle_metrics(cfg: SyntheticConfig, user_ids: list[str], item_ids: list[str], targets: list[list[int]],
                   *, simulations: int = 256, seed: int = 0) -> dict[str, float]:
    """Expected metrics of the Bayes-optimal ranker on one split of a prepared synthetic dataset.

    ``user_ids`` / ``item_ids``: raw ids of the prepared users / catalog items (the generator's
    integers as strings); ``targets``: the split's target item indices per user (k each, in time order).
    """
    sim = simulate(cfg)
    catalog = np.array([int(i) for i in item_ids])
    in_catalog = np.zeros(cfg.num_items, dtype=bool)
    in_catalog[catalog] = True
    users = np.array([int(u) for u in user_ids])
    k = len(targets[0])
    positions = np.array([sim.sequences[u].index(int(item_ids[t[0]])) for u, t in zip(users, targets)])
    rng = np.random.Generator(np.random.PCG64(seed))
    parts = []
    batch = max(1, ROWS_PER_BATCH // simulations) if k > 1 else 64
    for lo in range(0, len(users), batch):
        q = _membership(cfg, sim, users[lo : lo + batch], positions[lo : lo + batch], k, simulations, rng)
        q = q[:, catalog]
        if k == 1:
            q = q / q.sum(axis=1, keepdims=True)
        parts.append(q)
    metrics = expected_metrics(np.concatenate(parts), k)
    return {key: round(v, 4) for key, v in metrics.items()}
