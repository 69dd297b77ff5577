"""``DataConfig`` -> prepared dataset directory (read -> sequences/split -> semantic IDs -> files).

Reads the source named by ``cfg.dataset``, builds the leave-k-out split (sequences.py), semantic IDs
from training interactions or item features (semantic_ids.py), writes the files of dataset.py plus
the resolved config, and returns ``meta`` (also in meta.json).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recast_mcore.config.base import save_config
from recast_mcore.config.data import DataConfig
from recast_mcore.data.baseline import count_baselines
from recast_mcore.data.dataset import write_meta, write_prepared
from recast_mcore.data.fetch import fetch_ml100k
from recast_mcore.data.readers import RawInteractions, read_interactions, read_ml100k_item_features, read_movielens
from recast_mcore.data.semantic_ids import build_semantic_ids
from recast_mcore.data.sequences import build_sequences
from recast_mcore.data.synthetic import generate_synthetic
from recast_mcore.data.tokens import ItemVocab


def load_raw(cfg: DataConfig) -> RawInteractions:
    """The raw interactions of ``cfg.dataset`` (fetching ml-100k into the cache when needed)."""
    if cfg.dataset == "synthetic":
        return generate_synthetic(cfg.synthetic)
    if cfg.dataset == "ml-100k":
        directory = fetch_ml100k()
        raw = read_movielens(directory / "ml-100k.inter", skip_malformed=cfg.skip_malformed)
        raw.item_features = read_ml100k_item_features(directory / "ml-100k.item")
        return raw
    if not cfg.path:
        raise ValueError(f"dataset '{cfg.dataset}' needs a path to its input file (--path or data.path)")
    return read_interactions(cfg.dataset, cfg.path, skip_malformed=cfg.skip_malformed)


def prepare_dataset(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the whole preparation and write ``out_dir``; returns the meta dict."""
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    raw = load_raw(cfg)
    timings["read_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    split, counts = build_sequences(
        raw,
        kcore=cfg.kcore,
        target_set_size=cfg.target_set_size,
        min_rating=cfg.min_rating,
        dedup=cfg.dedup_interactions,
    )
    timings["sequences_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sids = build_semantic_ids(cfg.semantic_ids, split.train, split.item_ids, raw.item_features)
    vocab = ItemVocab(sids.codes, sids.codes_per_level)
    timings["semantic_ids_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    baselines = count_baselines(split.train, split.valid, split.num_items)
    timings["baselines_s"] = time.perf_counter() - clock

    meta = _meta(cfg, raw, split, counts, sids.stats, vocab, baselines, timings)
    clock = time.perf_counter()
    write_prepared(out_dir, split, vocab, meta)
    save_config(cfg, out_dir / "config.yaml")
    timings["write_s"] = time.perf_counter() - clock
    timings["total_s"] = sum(timings.values())
    meta["timings"] = {k: round(v, 3) for k, v in timings.items()}
    write_meta(out_dir, meta)  # again, now with the write time
    return meta


def _meta(cfg, raw, split, counts, sid_stats, vocab, baselines, timings) -> dict[str, Any]:
    interactions = split.num_interactions
    return {
        "dataset": cfg.dataset,
        "source": raw.source,
        "users": split.num_users,
        "items": split.num_items,
        "interactions": interactions,
        "sparsity": round(1.0 - interactions / (split.num_users * split.num_items), 6),
        "mean_sequence_length": round(interactions / split.num_users, 3),
        "skipped_rows": raw.skipped_rows,
        "skipped_examples": raw.skipped_examples,
        "filtering": counts,
        "kcore": cfg.kcore,
        "max_history": cfg.max_history,
        "target_set_size": cfg.target_set_size,
        "semantic_ids": {
            "embedding": cfg.semantic_ids.embedding,
            "levels": cfg.semantic_ids.levels,
            "codes_per_level": vocab.codes_per_level,
            "item_len": vocab.item_len,
            "vocab_size": vocab.vocab_size,
            **sid_stats,
        },
        "baselines_valid": baselines,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
