"""Data configuration: which dataset, how it is filtered/split, and how items become semantic IDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class SyntheticConfig:
    """Embedded deterministic generator (no download)."""

    num_users: int = 2000
    """Number of synthetic users."""
    num_items: int = 1000
    """Number of synthetic items."""
    num_clusters: int = 20
    """Number of taste clusters users and items belong to."""
    mean_history: int = 20
    """Mean interactions per user (before k-core)."""
    popularity_alpha: float = 1.1
    """Zipf exponent of item popularity inside a cluster."""
    transition_prob: float = 0.5
    """Probability that the next item follows the sequential transition of the previous one."""
    seed: int = 1234
    """Seed: the same seed gives byte-identical data."""


@dataclass(kw_only=True)
class SemanticIdConfig:
    """Residual k-means (RQ-KMeans) semantic IDs over item embeddings."""

    levels: int = 3
    """Number of residual-quantization levels L."""
    codes_per_level: int = 16
    """Codebook size K at every level."""
    embedding: Literal["cooccurrence_svd", "features"] = "cooccurrence_svd"
    """Where item embeddings come from: SVD of the TRAINING co-occurrence PMI matrix, or given features."""
    embedding_dim: int = 32
    """Dimension of the item embeddings fed to RQ-KMeans."""
    kmeans_iters: int = 30
    """Lloyd iterations per level."""
    seed: int = 0
    """Seed for k-means initialization."""


@dataclass(kw_only=True)
class DataConfig:
    """Dataset selection, preprocessing and the prepared-data location."""

    dataset: Literal["synthetic", "ml-100k", "movielens", "amazon", "csv"] = "synthetic"
    """Source: embedded synthetic, MovieLens-100k (fetched), a MovieLens file, Amazon reviews, or generic CSV/TSV."""
    path: str = ""
    """Input file for movielens/amazon/csv (unused for synthetic and ml-100k)."""
    prepared_dir: str = ""
    """Directory of the prepared dataset (written by `recast-data prepare`, read by training)."""
    kcore: int = 5
    """Iterative k-core filter: every kept user and item has at least this many interactions."""
    max_history: int = 20
    """Maximum number of history items in a prompt (most recent kept)."""
    target_set_size: int = 1
    """Size of the target set: the next k items count as hits (OpenOneRec uses up to 10)."""
    skip_malformed: bool = False
    """Count and skip malformed rows instead of failing with file and line."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic generator settings."""
    semantic_ids: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    """Semantic-ID settings."""
