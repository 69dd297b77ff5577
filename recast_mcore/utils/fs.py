"""Directory replacement that a reader never sees half done."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the complete directory ``tmp`` to ``final``; an existing ``final`` is moved aside first and
    deleted after, so ``final`` is always either the old or the new complete directory."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final
