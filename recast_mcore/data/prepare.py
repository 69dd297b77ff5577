"""``DataConfig`` -> prepared dataset directory (read -> sequences/split -> semantic IDs -> files).

Reads the source named by ``cfg.dataset``, builds the leave-k-out split (sequences.py), semantic IDs
from training interactions or item features (semantic_ids.py), writes the files of dataset.py plus
the resolved config, and returns ``meta`` (also in meta.json).

Output safety: ``out_dir`` must be new, empty, or (with ``force``) a prepared dataset and nothing else;
anything else is refused before any work starts. Everything is written into ``.<name>.tmp-<pid>`` beside
``out_dir`` (created first, so an unwritable location fails at once) and renamed into place at the end, so
a failed or killed preparation leaves the previous directory as it was.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recast_mcore.config.base import save_config
from recast_mcore.config.data import DataConfig
from recast_mcore.data.baseline import split_baselines
from recast_mcore.data.dataset import REQUIRED_FILES, write_meta, write_prepared
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


def prepare_dataset(cfg: DataConfig, out_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Run the whole preparation and write ``out_dir`` atomically (see module doc); returns the meta dict."""
    with staged_output(Path(out_dir), force) as stage:
        return _prepare_into(cfg, stage)


def _prepare_into(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
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
    baselines = split_baselines(split.train, split.valid, split.test, split.num_items)
    if cfg.dataset == "synthetic":
        from recast_mcore.data.oracle import oracle_metrics

        for name, targets in (("valid", split.valid), ("test", split.test)):
            baselines[name]["oracle"] = oracle_metrics(cfg.synthetic, split.user_ids, split.item_ids, targets)
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


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` whose contents would be lost (ValueError saying what to do)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a directory; choose a directory path")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in REQUIRED_FILES]
    if foreign or "meta.json" not in names:
        shown = ", ".join((foreign or names)[:5])
        raise ValueError(f"--out {out} is not empty and is not a prepared dataset (it holds {shown}); "
                         f"choose a new or empty directory (nothing was written)")
    if not force:
        raise ValueError(f"--out {out} already holds a prepared dataset; pass --force to replace it (runs trained on it "
                         f"will then refuse to resume: their checkpoints record the old dataset's fingerprint)")


@contextmanager
def staged_output(out: Path, force: bool):
    """Yield an empty staging directory beside ``out``; on success it replaces ``out`` (rename), on failure it is removed."""
    check_output_dir(out, force)
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as exc:
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else f"{exc.strerror}: {exc.filename}"
        raise ValueError(f"--out {out}: cannot create it ({why}); choose a writable directory (nothing was read yet)") from None
    try:
        yield stage
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():  # empty, or a prepared dataset replaced with force
            out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
        "baselines_valid": baselines["valid"],
        "baselines_test": baselines["test"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
