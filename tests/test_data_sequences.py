"""k-core filtering, chronological ordering and the leave-k-out split."""

import numpy as np
import pytest

from recast_mcore.data.readers import RawInteractions
from recast_mcore.data.sequences import build_sequences, kcore_mask


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def raw_from(rows, ratings=None):
    users, items, times = zip(*rows)
    return RawInteractions(
        users=list(users),
        items=list(items),
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float64),
        source="test",
    )


def brute_kcore(pairs, k):
    pairs = list(pairs)
    while True:
        users = {u: sum(1 for p in pairs if p[0] == u) for u, _ in pairs}
        items = {i: sum(1 for p in pairs if p[1] == i) for _, i in pairs}
        kept = [p for p in pairs if users[p[0]] >= k and items[p[1]] >= k]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def test_kcore_matches_brute_force_iteration():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 400)
    items = (rng.zipf(1.6, 400) % 40).astype(np.int64)
    for k in (2, 3, 5):
        keep, rounds = kcore_mask(users, items, k)
        got = sorted(zip(users[keep].tolist(), items[keep].tolist()))
        assert got == sorted(brute_kcore(zip(users.tolist(), items.tolist()), k))
        if keep.any():
            assert np.bincount(users[keep]).max() >= k
            assert (np.bincount(users[keep])[np.unique(users[keep])] >= k).all()
            assert (np.bincount(items[keep])[np.unique(items[keep])] >= k).all()
        assert rounds >= 1


def test_kcore_needs_several_rounds():
    # round 1 drops user c (1 row); then item x has only user b left and goes; then user b has 1 row.
    rows = [("a", "y", 1), ("a", "z", 2), ("b", "x", 1), ("b", "y", 2), ("c", "x", 1), ("d", "y", 3), ("d", "z", 4)]
    users = np.array([ord(r[0]) for r in rows])
    items = np.array([ord(r[1]) for r in rows])
    keep, rounds = kcore_mask(users, items, 2)
    assert [r[:2] for r, k in zip(rows, keep) if k] == [("a", "y"), ("a", "z"), ("d", "y"), ("d", "z")]
    assert rounds == 4  # three rounds that remove rows, one that confirms
    keep3, rounds3 = kcore_mask(users, items, 3)
    assert not keep3.any() and rounds3 >= 2


def test_chronological_order_with_stable_ties_and_split():
    rows = [
        ("u2", "10", 5), ("u1", "3", 2), ("u1", "1", 1), ("u1", "2", 2),  # "3" and "2" tie at t=2: file order
        ("u1", "4", 9), ("u1", "5", 7), ("u2", "1", 1), ("u2", "2", 3),
    ]
    split, stats = build_sequences(raw_from(rows), kcore=1, target_set_size=1)
    assert split.user_ids == ["u1", "u2"]
    assert split.item_ids == ["1", "2", "3", "4", "5", "10"]  # numeric ids sort numerically
    idx = {raw: i for i, raw in enumerate(split.item_ids)}
    u1 = [idx[x] for x in ["1", "3", "2", "5", "4"]]
    assert split.train[0] + split.valid[0] + split.test[0] == u1
    assert (split.train[0], split.valid[0], split.test[0]) == (u1[:3], [u1[3]], [u1[4]])
    assert (split.train[1], split.valid[1], split.test[1]) == ([idx["1"]], [idx["2"]], [idx["10"]])
    assert stats["rows_read"] == 8 and stats["users_too_short_for_split"] == 0


def test_target_set_split_and_short_users_dropped():
    rows = [("a", str(i), i) for i in range(7)] + [("b", str(i), i) for i in range(4)]
    split, stats = build_sequences(raw_from(rows), kcore=1, target_set_size=2)
    assert split.user_ids == ["a"] and stats["users_too_short_for_split"] == 1  # b needs 2k+1 = 5
    assert split.train[0] == [0, 1, 2] and split.valid[0] == [3, 4] and split.test[0] == [5, 6]
    assert split.num_items == 7  # items of dropped users stay in the catalog


def test_dedup_keeps_earliest_and_rating_filter():
    rows = [("a", "1", 1), ("a", "2", 2), ("a", "1", 3), ("a", "3", 4), ("a", "4", 5)]
    split, stats = build_sequences(raw_from(rows), kcore=1, target_set_size=1)
    assert split.train[0] + split.valid[0] + split.test[0] == [0, 1, 2, 3]
    assert stats["rows_after_dedup"] == 4
    split, _ = build_sequences(raw_from(rows), kcore=1, target_set_size=1, dedup=False)
    assert split.train[0] + split.valid[0] + split.test[0] == [0, 1, 0, 2, 3]
    rated = raw_from(rows, ratings=[5, 1, 5, 5, 5])
    split, stats = build_sequences(rated, kcore=1, target_set_size=1, min_rating=3)
    assert stats["rows_after_rating_filter"] == 4 and split.item_ids == ["1", "3", "4"]
    with pytest.raises(ValueError, match="has no ratings"):
        build_sequences(raw_from(rows), kcore=1, target_set_size=1, min_rating=3)
    partly = raw_from(rows, ratings=[5, float("nan"), 5, 5, 5])
    with pytest.raises(ValueError, match="1 rows of test have no rating"):
        build_sequences(partly, kcore=1, target_set_size=1, min_rating=3)


def test_nothing_survives_raises():
    rows = [("a", "1", 1), ("b", "2", 1)]
    with pytest.raises(ValueError, match="nothing survives the 3-core"):
        build_sequences(raw_from(rows), kcore=3, target_set_size=1)
    with pytest.raises(ValueError, match="leave-1-out split needs"):
        build_sequences(raw_from(rows), kcore=1, target_set_size=1)
