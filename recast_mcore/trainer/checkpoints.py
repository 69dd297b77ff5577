"""Checkpoint bookkeeping inside a run directory.

Layout (the directories, their manifests and ``latest`` are written by ``MegatronActor.save``, atomically:
a save goes to ``.<name>.tmp`` and is renamed into place, then ``latest`` is rewritten via tmp + rename)::

    <run_dir>/checkpoints/sft_step_000040/         (complete: manifest.json lists every file's size and sha256)
    <run_dir>/checkpoints/rl_step_000010/
    <run_dir>/checkpoints/rl_step_000012.corrupt/  (failed verification on resume; kept for inspection)
    <run_dir>/checkpoints/latest                   (text: the name of the last checkpoint saved; a hint only)

Resume does not need ``latest``: ``newest_first`` lists the ``<stage>_step_<N>`` directories by (stage, step)
and ``usable`` keeps those whose manifest and file sizes check out (stat only; the sha256 check runs in
parallel on all ranks before loading, actor/checkpointing.py ``verify``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from recast_mcore.checkpoint import manifest
from recast_mcore.utils.paths import unique_path

LATEST = "latest"
from recast_mcore.utils.metric_log import STAGE_ORDER
_NAME = re.compile(r"^(?P<stage>[a-z]+)_step_(?P<step>\d+)$")


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}_step_{step:06d}"


def read_latest(root: str | Path) -> Path | None:
    """What ``root/latest`` names (None when there is no pointer); not checked for completeness."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name or not path.is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint '{name}' but {path} does not exist")
    return path


def write_latest(root: str | Path, path: Path) -> None:
    """Point ``root/latest`` at ``path`` (tmp + rename)."""
    tmp = Path(root) / (LATEST + ".tmp")
    tmp.write_text(path.name + "\n")
    tmp.replace(Path(root) / LATEST)


def order(path: Path) -> tuple[int, int]:
    """(stage order, step) of a ``<stage>_step_<N>`` directory; (-1, -1) for any other name."""
    match = _NAME.match(path.name)
    if match is None or match["stage"] not in STAGE_ORDER:
        return (-1, -1)
    return STAGE_ORDER[match["stage"]], int(match["step"])


def newest_first(root: str | Path) -> list[Path]:
    """Every ``<stage>_step_<N>`` directory under ``root`` (complete or not), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and order(p) != (-1, -1)]
    return sorted(found, key=order, reverse=True)


def usable(root: str | Path) -> tuple[list[Path], dict[Path, list[str]]]:
    """(checkpoints that pass the structural check, newest first; {checkpoint: problems} of the others)."""
    good, bad = [], {}
    for path in newest_first(root):
        problems = manifest.check_structure(path)
        if problems:
            bad[path] = problems
        else:
            good.append(path)
    return good, bad


def describe(bad: dict[Path, list[str]]) -> str:
    return "\n".join(f"  {path.name}: " + "; ".join(problems) for path, problems in bad.items())


def quarantine(path: Path) -> Path:
    """Rename a checkpoint that failed verification to ``<name>.corrupt`` (``-2``, ... when taken); returns it."""
    target = unique_path(path.with_name(path.name + ".corrupt"))
    path.rename(target)
    return target


def resolve(path: str | Path, setting: str) -> Path:
    """A complete checkpoint given by a user: ``path`` itself, or the newest usable one under ``path`` or
    ``path/checkpoints``; ``manifest.CheckpointError`` naming every problem otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise manifest.CheckpointError(f"{setting}={path} does not exist")
    if any((path / name).is_file() for name in (manifest.MANIFEST, "actor_meta.json")):  # a checkpoint itself
        problems = manifest.check_structure(path)
        if problems:
            raise manifest.CheckpointError(f"{setting}={path} is not a complete checkpoint: " + "; ".join(problems))
        return path
    root = next((r for r in (path, path / "checkpoints") if newest_first(r)), None)
    if root is None:
        raise manifest.CheckpointError(f"{setting}={path}: no checkpoint there (no {manifest.MANIFEST}, no <stage>_step_<N> directories)")
    good, bad = usable(root)
    if not good:
        raise manifest.CheckpointError(f"{setting}={path}: no complete checkpoint under {root}:\n{describe(bad)}")
    return good[0]


def prune(root: str | Path, keep_last: int, current: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints up to ``current`` (0 keeps all); never ``current``
    nor the checkpoints named in ``keep`` (the best evaluation's, see trainer/hooks.py).

    Only ``<stage>_step_<N>`` directories are touched: ``.<name>.tmp`` (a save in progress or killed) is
    left to the actor, ``<name>.corrupt`` to the user.
    """
    if keep_last <= 0:
        return []
    older = [p for p in newest_first(root) if order(p) <= order(current)]
    removed = []
    for path in older[keep_last:]:
        if path.name != current.name and path.name not in keep:
            shutil.rmtree(path)
            removed.append(path)
    return removed
