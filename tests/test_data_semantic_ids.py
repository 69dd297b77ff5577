"""RQ-KMeans semantic IDs: k-means, de-duplication, embeddings, quality figures."""

import numpy as np
import pytest
import torch

from recast_mcore.config.data import SemanticIdConfig
from recast_mcore.data.semantic_ids import (
    build_semantic_ids,
    cooccurrence_pairs,
    dedup_codes,
    feature_embeddings,
    kmeans,
    ppmi_triplets,
    residual_kmeans,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dedup_codes_by_item_index():
    codes = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 0], [1, 1]])
    out, largest = dedup_codes(codes)
    assert largest == 3
    assert out.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 2], [1, 1, 0]]
    unique = torch.tensor([[0, 1], [1, 0]])
    out, largest = dedup_codes(unique)
    assert largest == 1 and out.equal(unique)  # no dedup level without collisions


def test_kmeans_recovers_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    labels = torch.arange(300) % 3
    x = centers[labels] + 0.1 * torch.randn(300, 2, generator=gen, dtype=torch.float64)
    _, assign = kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    # same partition up to relabeling
    mapping = {int(a): int(lab) for a, lab in zip(assign, labels)}
    assert len(set(mapping.values())) == 3
    assert all(mapping[int(a)] == int(lab) for a, lab in zip(assign, labels))


def test_kmeans_is_exact_with_few_distinct_points():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    centroids, assign = kmeans(x, 8, 5, torch.Generator().manual_seed(0))
    assert centroids[assign].equal(x) and assign[0] == assign[2] != assign[1]


def test_residual_kmeans_shapes_and_determinism():
    emb = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))
    a = residual_kmeans(emb, 3, 4, 10, seed=5)
    b = residual_kmeans(emb, 3, 4, 10, seed=5)
    assert a.shape == (200, 3) and a.equal(b)
    assert int(a.max()) < 4 and int(a.min()) >= 0


def test_ppmi_from_pairs():
    # user sequences [0, 1] and [0, 1, 2] with window 1: pairs (0,1) x2, (1,2) x1, both directions
    rows, cols = cooccurrence_pairs([[0, 1], [0, 1, 2]], window=1)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 1), (1, 0), (1, 0), (1, 2), (2, 1)]
    r, c, v = ppmi_triplets(rows, cols, 3)
    # c_01 = 2, c_0 = 2, c_1 = 3, total 6: PMI(0,1) = log(2 * 6 / (2 * 3)) = log 2; PMI(1,2) = log(6 / 3) = log 2
    got = {(int(a), int(b)): float(x) for a, b, x in zip(r, c, v)}
    assert got == pytest.approx({(0, 1): np.log(2), (1, 0): np.log(2), (1, 2): np.log(2), (2, 1): np.log(2)})


def test_features_embedding_requires_every_item():
    feats = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    emb = feature_embeddings(["a", "b"], feats)
    assert emb.shape == (2, 2) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match=r"1 items have no features \(e.g. \['c'\]\)"):
        feature_embeddings(["a", "c"], feats)
    with pytest.raises(ValueError, match="has no item features"):
        feature_embeddings(["a"], None)


def test_build_semantic_ids_codes_are_unique_and_stats_consistent():
    rng = np.random.default_rng(0)
    train = [rng.choice(120, size=12, replace=False).tolist() for _ in range(300)]
    cfg = SemanticIdConfig(levels=2, codes_per_level=4, embedding_dim=8, kmeans_iters=10)
    sids = build_semantic_ids(cfg, train, [str(i) for i in range(120)])
    assert torch.unique(sids.codes, dim=0).shape[0] == 120  # dedup makes every item distinct
    base = sids.codes[:, :2]
    distinct = torch.unique(base, dim=0).shape[0]
    assert sids.stats["collision_rate"] == pytest.approx(1 - distinct / 120)
    assert sids.stats["dedup_level"] == (sids.codes.shape[1] == 3)  # 120 items > 16 tuples: must collide
    assert sids.codes.shape[1] == 3 and sids.codes_per_level[:2] == [4, 4]
    assert sids.codes_per_level[2] == sids.stats["max_collision_group"] == int(sids.codes[:, 2].max()) + 1
    assert sids.stats["codebook_utilization"] == [torch.unique(base[:, i]).numel() / 4 for i in range(2)]


def test_semantic_ids_ignore_anything_but_training_sequences():
    rng = np.random.default_rng(1)
    train = [rng.choice(60, size=10, replace=False).tolist() for _ in range(100)]
    cfg = SemanticIdConfig(levels=2, codes_per_level=8, embedding_dim=8)
    a = build_semantic_ids(cfg, train, [str(i) for i in range(60)])
    b = build_semantic_ids(cfg, [list(s) for s in train], [str(i) for i in range(60)])
    assert a.codes.equal(b.codes)
    changed = [s[1:] for s in train]  # different training data -> different embeddings
    c = build_semantic_ids(cfg, changed, [str(i) for i in range(60)])
    assert not c.codes.equal(a.codes)


def test_sparse_svd_path_matches_dense(monkeypatch):
    from recast_mcore.data import semantic_ids

    rng = np.random.default_rng(2)
    train = [rng.choice(80, size=10, replace=False).tolist() for _ in range(200)]
    dense = semantic_ids.cooccurrence_embeddings(train, 80, 6, 3, seed=0)
    monkeypatch.setattr(semantic_ids, "DENSE_SVD_MAX_ITEMS", 0)
    sparse = semantic_ids.cooccurrence_embeddings(train, 80, 6, 3, seed=0)
    assert torch.allclose(dense, sparse, atol=1e-4)
