"""Checkpoint bookkeeping inside a run directory.

Layout (the directories and ``latest`` are written by ``MegatronActor.save``, atomically: a save goes to
``.<name>.tmp`` and is renamed into place, then ``latest`` is rewritten via tmp + rename)::

    <run_dir>/checkpoints/sft_step_000040/   (complete: holds actor_meta.json, written last)
    <run_dir>/checkpoints/rl_step_000010/
    <run_dir>/checkpoints/latest              (text: the name of the last COMPLETE checkpoint)

So a run killed at any point, even mid-save, still finds the previous complete checkpoint in ``latest``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LATEST = "latest"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}_step_{step:06d}"


def read_latest(root: str | Path) -> Path | None:
    """The last complete checkpoint under ``root`` (None when there is none)."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name or not path.is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint '{name}' but {path} does not exist; delete {pointer} to start over")
    return path


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 keeps all); never deletes ``latest``.

    Hidden directories (``.<name>.tmp`` of a save in progress or killed) are left to the actor.
    """
    root = Path(root)
    latest = read_latest(root)
    if keep_last <= 0 or latest is None:
        return []
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_order)
    dirs = [p for p in dirs if _order(p) <= _order(latest)]
    removed = []
    for path in dirs[:-keep_last]:
        if path != latest:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _order(path: Path) -> tuple[int, int]:
    stage, _, step = path.name.partition("_step_")
    return ({"sft": 0, "rl": 1}.get(stage, -1), int(step) if step.isdigit() else -1)
