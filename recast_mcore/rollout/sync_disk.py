"""Disk transport: sharded safetensors snapshots in the serving dtype, then ``/update_weights_from_disk``.

Each stage source writes one shard per bucket, ``model-s<stage>-b<bucket>.safetensors``, into the snapshot's
temporary directory (shared filesystem); each shard is written to ``*.tmp`` and renamed, so a shard is whole or
absent. Rank 0 then writes ``model.safetensors.index.json`` (the HF sharded-checkpoint index), adds the
non-weight files (config, tokenizer) and renames the directory into place: servers (and a restarted server)
only ever load complete snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from recast_mcore.checkpoint.hf_mapping import write_metadata
from recast_mcore.rollout.weight_sync import WEIGHT_SUFFIXES, NamedTensors, SyncTarget, check_bucket
from recast_mcore.utils.fs import replace_dir

INDEX = "model.safetensors.index.json"


def shard_name(stage: int, index: int) -> str:
    return f"model-s{stage:03d}-b{index:05d}.safetensors"


def write_shard(directory: Path, name: str, tensors: NamedTensors) -> None:
    """One safetensors file (CPU copies of ``tensors``), written to a temporary name and renamed."""
    tmp = directory / (name + ".tmp")
    save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / name)


class DiskSender:
    """Writes one stage's buckets as shards of ``target.snapshot_dir``."""

    def __init__(self, target: SyncTarget, stage: int):
        self.dir, self.stage, self.shapes = Path(target.snapshot_dir), stage, target.shapes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.weight_map: dict[str, str] = {}

    def push(self, index: int, tensors: NamedTensors) -> None:
        check_bucket(tensors, self.shapes)
        name = shard_name(self.stage, index)
        write_shard(self.dir, name, tensors)
        self.weight_map.update((n, name) for n, _ in tensors)

    def close(self) -> dict[str, str]:
        return dict(self.weight_map)


def finalize_snapshot(tmp_dir: Path, final_dir: Path, weight_map: dict[str, str], *, template_dir: Path | None = None,
                      files: dict[str, str] | None = None, copies: list[Path] = ()) -> Path:
    """Rank 0: index + non-weight files (copied from ``template_dir``, given as ``files`` and/or copied from
    ``copies``: checkpoint/hf_mapping.hf_metadata_files), then rename."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    total = sum((tmp_dir / f).stat().st_size for f in set(weight_map.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp_dir / INDEX).write_text(json.dumps(index, indent=1))
    if template_dir is not None:
        for f in Path(template_dir).iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp_dir / f.name)
    write_metadata(tmp_dir, files or {}, list(copies))
    return replace_dir(tmp_dir, final_dir)
