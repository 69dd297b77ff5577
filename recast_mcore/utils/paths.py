"""Small filesystem helpers for writing safely: fresh names and early writability checks."""

from __future__ import annotations

import os
from pathlib import Path


def unique_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def unwritable_reason(path: str | Path, *, directory: bool = False) -> str | None:
    """Why ``path`` (a file, or a directory when ``directory``) could not be created or written, or None.

    Checked without writing anything: ``path`` is not the other kind of entry, its nearest existing
    ancestor is a directory we may write to (and ``path`` itself is writable when it exists)."""
    path = Path(path)
    if path.exists():
        if path.is_dir() != directory:
            return f"{path} is {'a file' if directory else 'a directory'}, not {'a directory' if directory else 'a file'}"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    ancestor = next(p for p in path.parents if p.exists() or p == p.parent)
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    return None if os.access(ancestor, os.W_OK) else f"{ancestor} is not writable"
