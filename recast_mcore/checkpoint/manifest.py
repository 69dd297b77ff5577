"""Checkpoint manifests: what a complete checkpoint directory holds, so that it can verify itself.

``<checkpoint>/manifest.json`` is written last, just before the directory is renamed into place::

    {"format": 1,
     "files": {"<relative path>": {"size": int, "sha256": "<hex>"}, ...},   # EVERY other file of the directory
     "model": {...ModelConfig...}, "dataset": {...fingerprint...}, ...}      # what the writer adds (``info``)

The manifest is generic: it hashes whatever files the directory holds (model and optimizer shards, RNG
states, a reference model, trainer state), so a new kind of file is covered without a change here.

Two checks, cheapest first:
  * ``check_structure`` (stat only, O(files)): manifest present and parseable, every listed file present
    with its recorded size. Catches a save that never finished, deleted and truncated files.
  * ``verify_files`` (reads every byte): sha256 of the listed files. Catches flipped bytes.

Cost: sha256 reads every byte once. ``assign`` splits the files between ranks so that every rank hashes
(about) the files it wrote, in parallel; see docs/reliability.md for the measured rate and the 8B figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 8 << 20
_OWNER = (re.compile(r"(?:^|/)__(\d+)_\d+\.distcp$"), re.compile(r"(?:^|/)rank_(\d+)\.\w+$"))
"""File names that say which global rank wrote them (dist_checkpointing shards, per-rank RNG files)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names the directory and the file."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(directory: str | Path) -> dict[str, int]:
    """Relative path -> size of every regular file under ``directory`` (the manifest itself excluded), sorted."""
    root = Path(directory)
    found = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    found.pop(MANIFEST, None)
    return dict(sorted(found.items()))


def owner_rank(name: str) -> int | None:
    """The global rank that wrote ``name`` when its name says so (``__<rank>_<n>.distcp``, ``rank_<rank>.pt``)."""
    for pattern in _OWNER:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def assign(sizes: dict[str, int], world: int, owner: Callable[[str], int | None] = owner_rank) -> list[list[str]]:
    """Split files between ``world`` ranks: a file goes to the rank that wrote it (its page cache holds it),
    the rest (common files) largest first to the least-loaded rank. Deterministic: every rank computes the
    same split from the same ``sizes``."""
    shares: list[list[str]] = [[] for _ in range(world)]
    load = [0] * world
    rest = []
    for name, size in sizes.items():
        rank = owner(name)
        if rank is not None and rank < world:
            shares[rank].append(name)
            load[rank] += size
        else:
            rest.append(name)
    for name in sorted(rest, key=lambda n: (-sizes[n], n)):
        rank = min(range(world), key=lambda r: (load[r], r))
        shares[rank].append(name)
        load[rank] += sizes[name]
    return shares


def hash_files(directory: str | Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"size", "sha256"}}`` for ``names`` under ``directory``."""
    root = Path(directory)
    return {name: {"size": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in names}


def write_manifest(directory: str | Path, files: dict[str, dict[str, Any]], info: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (tmp + fsync + rename) listing ``files`` plus the writer's ``info``."""
    root = Path(directory)
    missing = sorted(set(list_files(root)) - set(files))
    if missing:
        raise CheckpointError(f"{root}: files {missing} were not hashed; the manifest must cover every file")
    body = {"format": FORMAT, **info, "files": dict(sorted(files.items()))}
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(body, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(root / MANIFEST)
    return root / MANIFEST


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed manifest, or ``CheckpointError`` saying why there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete (or was written before checkpoints carried a manifest)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): the checkpoint is damaged") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} has no 'files' table: the checkpoint is damaged")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {manifest.get('format')!r}; this version reads format {FORMAT}")
    return manifest


def check_structure(directory: str | Path) -> list[str]:
    """Problems found by stat alone (no reads): missing manifest, missing or resized files. Empty = looks complete."""
    root = Path(directory)
    try:
        manifest = read_manifest(root)
    except CheckpointError as exc:
        return [str(exc)]
    problems = []
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['size']} (truncated or rewritten)")
    return problems


def verify_files(directory: str | Path, names: Iterable[str], manifest: dict[str, Any]) -> list[str]:
    """sha256 of ``names`` against ``manifest``; returns one problem per differing or unreadable file."""
    root = Path(directory)
    problems = []
    for name in names:
        path, want = root / name, manifest["files"][name]
        try:
            got = sha256_file(path)
        except OSError as exc:
            problems.append(f"{path} cannot be read: {exc}")
            continue
        if got != want["sha256"]:
            problems.append(f"{path} has sha256 {got[:12]}..., the manifest says {want['sha256'][:12]}... (bytes changed)")
    return problems


def verify(directory: str | Path) -> list[str]:
    """Both checks in one process (tools, tests; a collective version lives in actor/checkpointing.py)."""
    problems = check_structure(directory)
    if problems:
        return problems
    manifest = read_manifest(directory)
    return verify_files(directory, manifest["files"], manifest)


def dataset_differences(saved: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """Human-readable parts of two dataset fingerprints (data/dataset.py ``fingerprint``) that differ."""
    if not saved:
        return ["dataset: the checkpoint records no dataset fingerprint"]
    labels = {"vocab": "vocabulary and item codes (vocab.json)", "items": "item ids (items.tsv)",
              "splits": "users and splits (users.tsv, sequences.jsonl)"}
    return [
        f"dataset {labels.get(part, part)}: checkpoint {str(saved.get(part))[:12]}... vs prepared dataset {current[part][:12]}..."
        for part in current
        if part != "path" and saved.get(part) != current[part]
    ]
