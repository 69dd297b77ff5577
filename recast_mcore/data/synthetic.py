"""Deterministic synthetic interaction logs with learnable structure (no download).

Generative story (numpy ``Generator(PCG64(seed))``; the same config gives identical rows):
  * items are dealt round-robin over C taste clusters (after a seeded shuffle); inside a cluster
    item popularity is Zipf: weight of the r-th most popular item = (r + 1)^(-popularity_alpha);
  * every item has ``num_successors`` successor items (mostly from its own cluster); slot r has weight
    (r + 1)^(-successor_alpha): the sequential-transition structure (alpha < 1 spreads it out);
  * every user has a primary and a secondary cluster and a history length
    ``n = 5 + Geometric(1 / (mean_history - 4)) - 1`` (mean ``mean_history``, long tail, capped);
  * step t: with ``transition_prob`` the next item is a successor of the previous one; else with
    ``noise_prob`` a uniformly random item; else an item of the primary (prob. 0.7) or secondary
    cluster drawn by popularity. Items are not repeated within a user (resampled, up to 10 tries).
  * timestamps: a random start plus exponential gaps (mean one day), integer seconds.
Item features (for ``semantic_ids.embedding = features``) are the item's cluster centroid
(Gaussian, ``FEATURE_DIM`` dims) plus N(0, 0.5^2) noise.

``simulate`` returns the world and the users' latent clusters too; data/oracle.py uses them for the
Bayes-optimal reference (what a model that knew the generator could reach).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recast_mcore.config.data import SyntheticConfig
from recast_mcore.data.readers import RawInteractions

FEATURE_DIM = 16
MAX_HISTORY = 200
PRIMARY_CLUSTER_PROB = 0.7
SUCCESSOR_SAME_CLUSTER_PROB = 0.8
RESAMPLE_TRIES = 10


def _check(cfg: SyntheticConfig) -> None:
    if cfg.num_users < 1 or cfg.num_items < 2 or cfg.num_clusters < 1:
        raise ValueError(f"synthetic sizes must be positive (users={cfg.num_users}, items={cfg.num_items})")
    if cfg.num_clusters > cfg.num_items:
        raise ValueError(f"num_clusters={cfg.num_clusters} > num_items={cfg.num_items}")
    if cfg.mean_history < 6:
        raise ValueError(f"mean_history must be >= 6, got {cfg.mean_history}")
    for name in ("transition_prob", "noise_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.num_successors < 1 or cfg.successor_alpha < 0:
        raise ValueError(f"num_successors must be >= 1 and successor_alpha >= 0, got {cfg.num_successors}, {cfg.successor_alpha}")


class _World:
    """Clusters, popularity and successor tables drawn from the seed."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        n, c = cfg.num_items, cfg.num_clusters
        self.cluster_of = rng.permutation(n) % c
        self.members = [np.flatnonzero(self.cluster_of == k) for k in range(c)]
        self.member_probs = []
        for members in self.members:
            weights = (np.arange(members.shape[0]) + 1.0) ** -cfg.popularity_alpha
            rng.shuffle(weights)
            self.member_probs.append(weights / weights.sum())
        self.member_cdfs = [np.cumsum(p) for p in self.member_probs]
        succ_w = (np.arange(cfg.num_successors) + 1.0) ** -cfg.successor_alpha
        self.successor_probs = succ_w / succ_w.sum()
        self.successor_cdf = np.cumsum(self.successor_probs)
        self.successors = np.empty((n, cfg.num_successors), dtype=np.int64)
        for item in range(n):
            own = self.members[self.cluster_of[item]]
            same = rng.random(cfg.num_successors) < SUCCESSOR_SAME_CLUSTER_PROB
            self.successors[item] = np.where(same, rng.choice(own, cfg.num_successors), rng.integers(0, n, cfg.num_successors))
        centroids = rng.normal(size=(c, FEATURE_DIM))
        self.features = centroids[self.cluster_of] + 0.5 * rng.normal(size=(n, FEATURE_DIM))


def _next_item(cfg, world: _World, rng, prev: int | None, primary: int, secondary: int) -> int:
    u = rng.random()
    if prev is not None and u < cfg.transition_prob:
        return int(world.successors[prev, _draw(world.successor_cdf, rng)])
    if rng.random() < cfg.noise_prob:
        return int(rng.integers(0, cfg.num_items))
    cluster = primary if rng.random() < PRIMARY_CLUSTER_PROB else secondary
    return int(world.members[cluster][_draw(world.member_cdfs[cluster], rng)])


def _draw(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from the distribution with cumulative sums ``cdf``."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.shape[0] - 1)


@dataclass
class Simulation:
    """What the generator drew: the world, every user's latent (primary, secondary) cluster, the sequences."""

    world: _World
    clusters: np.ndarray
    """[num_users, 2] int64 primary and secondary cluster of each user."""
    sequences: list[list[int]]
    """Per user, the recorded item ids in time order (no repeats)."""
    times: list[list[float]]
    """Per user, the matching timestamps."""


def simulate(cfg: SyntheticConfig) -> Simulation:
    """Draw the world and the users (module docstring); the same config gives the same draws."""
    _check(cfg)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    world = _World(cfg, rng)
    clusters = np.zeros((cfg.num_users, 2), dtype=np.int64)
    sequences, all_times = [], []
    for user in range(cfg.num_users):
        primary, secondary = (int(x) for x in rng.integers(0, cfg.num_clusters, 2))
        clusters[user] = (primary, secondary)
        length = min(MAX_HISTORY, 5 + int(rng.geometric(1.0 / (cfg.mean_history - 4))) - 1, cfg.num_items)
        seen: set[int] = set()
        prev = None
        clock = float(rng.integers(1_000_000_000, 1_100_000_000))
        items, times = [], []
        for _ in range(length):
            for _ in range(RESAMPLE_TRIES):
                item = _next_item(cfg, world, rng, prev, primary, secondary)
                if item not in seen:
                    break
            else:
                continue
            seen.add(item)
            prev = item
            clock += float(np.floor(rng.exponential(86_400.0))) + 1.0
            items.append(item)
            times.append(clock)
        sequences.append(items)
        all_times.append(times)
    return Simulation(world=world, clusters=clusters, sequences=sequences, times=all_times)


def generate_synthetic(cfg: SyntheticConfig) -> RawInteractions:
    """Draw the interaction log described in the module docstring."""
    sim = simulate(cfg)
    users = [str(u) for u, seq in enumerate(sim.sequences) for _ in seq]
    items = [str(i) for seq in sim.sequences for i in seq]
    times = [t for ts in sim.times for t in ts]
    return RawInteractions(
        users=users,
        items=items,
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=None,
        source=f"synthetic(seed={cfg.seed})",
        item_features={str(i): sim.world.features[i] for i in range(cfg.num_items)},
    )
