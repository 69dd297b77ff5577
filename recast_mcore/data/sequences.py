"""Raw interactions -> filtered, chronological per-user item sequences -> leave-k-out split.

Pipeline (n rows, numpy, no Python loop over rows):
  1. optional rating filter ``rating >= min_rating``;
  2. chronological order per user: sort by (user, timestamp, file row) - ties keep file order;
  3. optional de-duplication of (user, item) pairs, keeping the earliest interaction;
  4. iterative k-core: drop users and items with fewer than k interactions until none is left;
  5. integer indices: users and items sorted by raw id (numerically when all ids are integers).

Split (``target_set_size`` = k, leave-one-out when k = 1), per user sequence s of length n:
  test = s[n-k:], valid = s[n-2k:n-k], train = s[:n-2k];  users with n < 2k + 1 are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recast_mcore.data.readers import RawInteractions


@dataclass
class SplitSequences:
    """Per-user chronological item indices, split into train / valid / test parts."""

    user_ids: list[str]
    """[num_users] raw user id of each user index."""
    item_ids: list[str]
    """[num_items] raw item id of each item index."""
    train: list[list[int]]
    """[num_users] training items, oldest first (at least 1)."""
    valid: list[list[int]]
    """[num_users] validation target items (k of them)."""
    test: list[list[int]]
    """[num_users] test target items (k of them)."""

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return sum(len(a) + len(b) + len(c) for a, b, c in zip(self.train, self.valid, self.test))


def _sorted_codes(raw: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unique raw ids in index order, index of every row); integer ids sort numerically.

    Integer ids beyond int64 (e.g. 20-digit hashes) sort as Python ints: O(U) conversions of the U unique
    ids, once per prepare."""
    values = np.asarray(raw, dtype=object)
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    try:
        order = np.argsort(uniq.astype(np.int64), kind="stable")
    except OverflowError:
        order = _python_int_order(uniq)
    except ValueError:
        return uniq, inverse
    if order is None:
        return uniq, inverse
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return uniq[order], rank[inverse]


def _python_int_order(uniq: np.ndarray) -> np.ndarray | None:
    """Argsort of ids as Python ints (some exceed int64), or None when one is not an integer."""
    try:
        return np.argsort(np.array([int(u) for u in uniq], dtype=object), kind="stable")
    except ValueError:
        return None


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Boolean keep-mask of the iterative k-core of the (users[i], items[i]) bipartite graph, and the rounds."""
    keep = np.ones(users.shape[0], dtype=bool)
    if k <= 1:
        return keep, 0
    rounds = 0
    while True:
        rounds += 1
        user_count = np.bincount(users[keep], minlength=users.max() + 1)
        item_count = np.bincount(items[keep], minlength=items.max() + 1)
        new_keep = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep, rounds
        keep = new_keep


def build_sequences(
    raw: RawInteractions,
    *,
    kcore: int,
    target_set_size: int,
    min_rating: float | None = None,
    dedup: bool = True,
) -> tuple[SplitSequences, dict[str, int]]:
    """Apply the pipeline of the module docstring; returns the split and row counts per stage."""
    if target_set_size < 1:
        raise ValueError(f"target_set_size must be >= 1, got {target_set_size}")
    stats = {"rows_read": len(raw)}
    _, users = _sorted_codes(raw.users)
    _, items = _sorted_codes(raw.items)
    users_raw = np.asarray(raw.users, dtype=object)
    items_raw = np.asarray(raw.items, dtype=object)
    keep = np.ones(len(raw), dtype=bool)
    if min_rating is not None:
        if raw.ratings is None:
            raise ValueError(f"min_rating={min_rating} is set but {raw.source} has no ratings")
        unrated = int(np.isnan(raw.ratings).sum())
        if unrated:
            raise ValueError(f"min_rating={min_rating} is set but {unrated} rows of {raw.source} have no rating")
        keep &= raw.ratings >= min_rating
    stats["rows_after_rating_filter"] = int(keep.sum())
    order = np.lexsort((np.arange(len(raw)), raw.timestamps, users))
    order = order[keep[order]]
    if dedup:
        pair = users[order].astype(np.int64) * (items.max() + 1) + items[order]
        _, first = np.unique(pair, return_index=True)
        order = order[np.sort(first)]
    stats["rows_after_dedup"] = int(order.shape[0])
    core, rounds = kcore_mask(users[order], items[order], kcore)
    order = order[core]
    stats["rows_after_kcore"] = int(order.shape[0])
    stats["kcore_rounds"] = rounds
    if order.shape[0] == 0:
        raise ValueError(f"{raw.source}: nothing survives the {kcore}-core filter")
    return _split(users_raw[order], items_raw[order], target_set_size, stats)


def _split(
    users_raw: np.ndarray, items_raw: np.ndarray, k: int, stats: dict[str, int]
) -> tuple[SplitSequences, dict[str, int]]:
    """Rows already grouped by user in time order -> indexed sequences and the leave-k-out split."""
    user_ids, user_idx = _sorted_codes(list(users_raw))
    item_ids, item_idx = _sorted_codes(list(items_raw))
    order = np.argsort(user_idx, kind="stable")  # regroup by user index, keeping time order
    bounds = np.flatnonzero(np.diff(user_idx[order])) + 1
    sequences = np.split(item_idx[order], bounds)
    owners = user_idx[order][np.concatenate([[0], bounds])]
    long_enough = [len(s) >= 2 * k + 1 for s in sequences]
    stats["users_too_short_for_split"] = int(len(sequences) - sum(long_enough))
    kept = [(int(u), s.tolist()) for u, s, ok in zip(owners, sequences, long_enough) if ok]
    if not kept:
        raise ValueError(f"no user has the {2 * k + 1} interactions a leave-{k}-out split needs")
    split = SplitSequences(
        user_ids=[str(user_ids[u]) for u, _ in kept],
        item_ids=[str(i) for i in item_ids],
        train=[s[: len(s) - 2 * k] for _, s in kept],
        valid=[s[len(s) - 2 * k : len(s) - k] for _, s in kept],
        test=[s[len(s) - k :] for _, s in kept],
    )
    return split, stats
