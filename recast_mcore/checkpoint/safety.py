"""Where a tool may write a checkpoint or a model directory (tools/convert_checkpoint.py, later importers).

Rules (each a small function a tool calls before any work):
  * never inside a training run's ``checkpoints/``: the run owns that directory and its ``latest`` pointer,
    and its resume scan would take any ``<stage>_step_<N>`` written there for its own;
  * never over an existing file, nor into a non-empty directory unless the user passed ``--force``;
  * the location must be writable (checked before the work, so a long conversion does not fail at the end).
"""

from __future__ import annotations

from pathlib import Path

from recast_mcore.checkpoint.manifest import MANIFEST
from recast_mcore.utils.paths import unwritable_reason

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "run.lock")
"""Files that make a directory a training run's directory."""


class OutputError(ValueError):
    """A tool's output location is refused; the message says why and what to do."""


def owning_run(path: str | Path) -> Path | None:
    """The run directory whose ``checkpoints/`` holds ``path`` (None when ``path`` is in no run's checkpoints)."""
    path = Path(path).resolve()
    for ancestor in (path, *path.parents):
        if ancestor.name != "checkpoints":
            continue
        run = ancestor.parent
        if (ancestor / "latest").exists() or any((run / marker).exists() for marker in RUN_MARKERS):
            return run
    return None


def check_output_dir(out: str | Path, *, force: bool, flag: str = "--out") -> Path:
    """``out`` may receive a tool's output directory (see module doc); returns it as a Path."""
    out = Path(out)
    run = owning_run(out)
    if run is not None:
        raise OutputError(f"{flag} {out} is inside the checkpoints of the run {run}; tools never write there (it would "
                          f"change what that run resumes from). Write elsewhere and point checkpoint.load_dir or "
                          f"sft/rl.init_checkpoint at it.")
    problem = unwritable_reason(out, directory=True)
    if problem:
        raise OutputError(f"{flag} {out}: {problem}; choose a writable directory (nothing was done)")
    if out.is_dir() and any(out.iterdir()) and not force:
        kind = "a checkpoint" if (out / MANIFEST).is_file() else "files"
        raise OutputError(f"{flag} {out} already holds {kind}; pass --force to replace them, or choose a new directory")
    return out
