"""Semantic IDs: item embeddings -> residual k-means (RQ-KMeans) codes -> de-duplicated code tuples.

Embeddings E [N, D] (rows L2-normalized; all-zero rows stay zero):
  * ``cooccurrence_svd``: from TRAINING sequences only (validation/test items never enter).
    Counts c_ij = #(ordered pairs of one user's training items at distance 1..w, both directions),
    c_i = sum_j c_ij, c = sum_ij c_ij;  PPMI_ij = max(0, log(c_ij c / (c_i c_j)));
    E = U_D sqrt(S_D) from the rank-D truncated (randomized) SVD of the PPMI matrix.
    Items with no training co-occurrence ("cold", counted in the stats) get a seeded random
    direction instead of a zero row, so they spread over codes instead of all colliding.
  * ``features``: given item feature vectors, columns standardized.
RQ-KMeans with L levels x K codes: r_0 = E; at level l (optionally r_l <- r_l / ||r_l|| first,
``normalize_residuals``: tight clusters are spread again, which lowers collisions), k-means
(k-means++ init, Lloyd iterations) on r_l gives codes q_l and centroids C_l; r_{l+1} = r_l - C_l[q_l].
De-duplication: items sharing the same L-code tuple get an extra code 0..g-1 (g = group size, by
item index); the level exists only when some tuple is shared, and then every item has L+1 codes
with K_dedup = max g.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from recast_mcore.config.data import SemanticIdConfig


DENSE_SVD_MAX_ITEMS = 4096
KMEANSPP_SAMPLE_PER_CODE = 32


@dataclass
class SemanticIds:
    """Codes of every item plus quality figures."""

    codes: torch.Tensor
    """[num_items, item_len] int64 codes (item_len = levels, +1 with a dedup level)."""
    codes_per_level: list[int]
    """K of every level (the dedup level's K is the largest collision group)."""
    stats: dict[str, float | int | list[float]]
    """collision_rate, items_in_collisions, max_collision_group, dedup_level, codebook_utilization, timings."""


# ------------------------------------------------------------------------------ embeddings
def cooccurrence_pairs(train: list[list[int]], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every (a, b) pair of one user's training items at distance 1..window."""
    flat = np.fromiter((i for seq in train for i in seq), dtype=np.int64)
    owner = np.repeat(np.arange(len(train)), [len(s) for s in train])
    left, right = [], []
    for offset in range(1, window + 1):
        same = owner[:-offset] == owner[offset:]
        left.append(flat[:-offset][same])
        right.append(flat[offset:][same])
    a, b = np.concatenate(left), np.concatenate(right)
    return np.concatenate([a, b]), np.concatenate([b, a])


def ppmi_triplets(rows: np.ndarray, cols: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive PMI entries (row, col, value) of the pair lists (see module docstring); symmetric."""
    keys, counts = np.unique(rows * num_items + cols, return_counts=True)
    r, c, counts = keys // num_items, keys % num_items, counts.astype(np.float64)
    marginal = np.bincount(r, weights=counts, minlength=num_items)
    pmi = np.log(counts * counts.sum() / (marginal[r] * marginal[c]))
    keep = pmi > 0
    return r[keep], c[keep], pmi[keep]


class _SymmetricMatrix:
    """``A @ X`` for the symmetric PPMI matrix: dense numpy when small, torch sparse COO otherwise."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int):
        if n <= DENSE_SVD_MAX_ITEMS:
            self.dense = np.zeros((n, n))
            self.dense[rows, cols] = vals
        else:
            self.dense = None
            index = torch.from_numpy(np.stack([rows, cols]))
            self.sparse = torch.sparse_coo_tensor(index, torch.from_numpy(vals), (n, n), is_coalesced=True, check_invariants=True)

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return self.dense @ x
        return torch.sparse.mm(self.sparse, torch.from_numpy(x)).numpy()


def randomized_svd(a: _SymmetricMatrix, n: int, rank: int, seed: int, oversample: int = 8, iters: int = 6):
    """Halko et al. randomized SVD of a symmetric n x n matrix: (U [n, rank], S [rank]).

    numpy LAPACK (QR/SVD) is used because the CPU torch build's LAPACK is far slower here.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    q = min(n, rank + oversample)
    basis, _ = np.linalg.qr(a @ rng.standard_normal((n, q)))
    for _ in range(iters):  # power iterations sharpen the spectrum (A is symmetric: A^T = A)
        basis, _ = np.linalg.qr(a @ basis)
    small = (a @ basis).T  # [q, n] = Q^T A
    u_small, s, _ = np.linalg.svd(small, full_matrices=False)
    return (basis @ u_small)[:, :rank], s[:rank]


def cooccurrence_embeddings(train: list[list[int]], num_items: int, dim: int, window: int, seed: int) -> torch.Tensor:
    """[num_items, dim] float32 L2-normalized rows of U sqrt(S) of the training PPMI matrix."""
    rows, cols = cooccurrence_pairs(train, window)
    out = np.zeros((num_items, dim))
    r, c, v = ppmi_triplets(rows, cols, num_items)
    rank = min(dim, num_items)
    u, s = randomized_svd(_SymmetricMatrix(r, c, v, num_items), num_items, rank, seed)
    out[:, :rank] = u * np.sqrt(s)
    cold = ~np.abs(out).any(1)
    if cold.any():  # no training co-occurrence: a seeded random direction just spreads their codes
        rng = np.random.Generator(np.random.PCG64(seed + 1))
        out[cold] = rng.standard_normal((int(cold.sum()), dim))
    return _normalize_rows(torch.from_numpy(out)).float()


def feature_embeddings(item_ids: list[str], features: dict[str, np.ndarray] | None) -> torch.Tensor:
    """[num_items, F] standardized, L2-normalized given features, rows in item-index order."""
    if not features:
        raise ValueError("semantic_ids.embedding = 'features' but this dataset has no item features")
    missing = [i for i in item_ids if i not in features]
    if missing:
        raise ValueError(f"{len(missing)} items have no features (e.g. {missing[:5]})")
    mat = torch.tensor(np.stack([features[i] for i in item_ids]), dtype=torch.float64)
    std = mat.std(0, unbiased=False)
    mat = (mat - mat.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    return _normalize_rows(mat).float()


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-12), x)


# ------------------------------------------------------------------------------ k-means
def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means with k-means++ init: x [N, D] -> (centroids [k', D], assign [N]), k' = min(k, N).

    When there are at most k distinct rows each distinct row is its own centroid (exact).
    An empty cluster is re-seeded with the point farthest from its centroid.
    """
    distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
    if distinct.shape[0] <= k:
        return distinct, inverse
    centroids = _kmeanspp(x, k, gen)
    previous = None
    for _ in range(iters):
        dist = torch.cdist(x, centroids)
        assign = dist.argmin(1)
        if previous is not None and torch.equal(assign, previous):
            break  # converged: the centroids below would not move
        previous = assign
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.zeros_like(centroids).index_add_(0, assign, x) / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():
            far = dist.gather(1, assign.unsqueeze(1)).squeeze(1).topk(empty.numel()).indices
            centroids[empty] = x[far]
    return centroids, torch.cdist(x, centroids).argmin(1)


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on a random subsample of at most ``KMEANSPP_SAMPLE_PER_CODE * k`` rows."""
    if x.shape[0] > KMEANSPP_SAMPLE_PER_CODE * k:
        x = x[torch.randperm(x.shape[0], generator=gen)[: KMEANSPP_SAMPLE_PER_CODE * k]]
    first = torch.randint(0, x.shape[0], (1,), generator=gen)
    chosen = [int(first)]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.ones_like(closest) / closest.numel()
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        chosen.append(nxt)
        closest = torch.minimum(closest, (x - x[nxt]).pow(2).sum(1))
    return x[chosen].clone()


def residual_kmeans(
    emb: torch.Tensor, levels: int, k: int, iters: int, seed: int, normalize_residuals: bool = True
) -> torch.Tensor:
    """RQ-KMeans codes [N, levels] (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    residual = emb.float()
    codes = []
    for _ in range(levels):
        if normalize_residuals:
            residual = _normalize_rows(residual)
        centroids, assign = kmeans(residual, k, iters, gen)
        codes.append(assign)
        residual = residual - centroids[assign]
    return torch.stack(codes, 1)


def dedup_codes(codes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Append a 0..g-1 rank inside every group of identical rows (by item index) when any group has g > 1.

    Returns (codes [N, L] or [N, L+1], max group size g).
    """
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    order = torch.argsort(group * codes.shape[0] + torch.arange(codes.shape[0]))
    sorted_group = group[order]
    starts = torch.ones_like(sorted_group, dtype=torch.bool)
    starts[1:] = sorted_group[1:] != sorted_group[:-1]
    start_pos = torch.cummax(torch.where(starts, torch.arange(order.shape[0]), 0), 0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0]) - start_pos
    largest = int(rank.max()) + 1
    if largest == 1:
        return codes, 1
    return torch.cat([codes, rank.unsqueeze(1)], 1), largest


def cold_items(train: list[list[int]], num_items: int) -> int:
    """Items that never occur in a training sequence (their SVD embedding is a random direction)."""
    seen = np.zeros(num_items, dtype=bool)
    seen[np.fromiter((i for s in train for i in s), dtype=np.int64)] = True
    return int((~seen).sum())


# ------------------------------------------------------------------------------ driver
def build_semantic_ids(
    cfg: SemanticIdConfig,
    train: list[list[int]],
    item_ids: list[str],
    item_features: dict[str, np.ndarray] | None = None,
) -> SemanticIds:
    """Embeddings (training-only co-occurrence or given features) -> RQ-KMeans -> dedup."""
    num_items = len(item_ids)
    start = time.perf_counter()
    if cfg.embedding == "cooccurrence_svd":
        emb = cooccurrence_embeddings(train, num_items, cfg.embedding_dim, cfg.cooccurrence_window, cfg.seed)
    else:
        emb = feature_embeddings(item_ids, item_features)
    embed_s = time.perf_counter() - start
    start = time.perf_counter()
    base = residual_kmeans(emb, cfg.levels, cfg.codes_per_level, cfg.kmeans_iters, cfg.seed, cfg.normalize_residuals)
    codes, largest = dedup_codes(base)
    kmeans_s = time.perf_counter() - start
    distinct = torch.unique(base, dim=0).shape[0]
    codes_per_level = [cfg.codes_per_level] * cfg.levels + ([largest] if largest > 1 else [])
    _, group, sizes = torch.unique(base, dim=0, return_inverse=True, return_counts=True)
    stats = {
        "collision_rate": 1.0 - distinct / num_items,
        "items_in_collisions": int((sizes[group] > 1).sum()),
        "max_collision_group": largest,
        "dedup_level": largest > 1,
        "codebook_utilization": [
            torch.unique(base[:, level]).numel() / cfg.codes_per_level for level in range(cfg.levels)
        ],
        "cold_items": cold_items(train, num_items) if cfg.embedding == "cooccurrence_svd" else 0,
        "embedding_seconds": round(embed_s, 4),
        "kmeans_seconds": round(kmeans_s, 4),
    }
    return SemanticIds(codes=codes, codes_per_level=codes_per_level, stats=stats)
