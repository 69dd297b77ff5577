"""Fetch MovieLens-100k at run time from the PyPI wheel ``recbole==1.2.1`` (never committed).

The wheel is a zip holding ``recbole/dataset_example/ml-100k/ml-100k.inter`` (interactions) and
``ml-100k.item`` (title, year, genres). ``pip download --no-deps`` fetches just that 2 MB wheel; both
files are extracted into ``<cache>/ml-100k/``. The cache is ``$RECAST_CACHE`` or
``~/.cache/recast_mcore`` - outside the repository, since GroupLens terms forbid redistribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_PIN = "recbole==1.2.1"
ML100K_MEMBERS = {
    "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
}


def cache_dir() -> Path:
    """``$RECAST_CACHE`` when set, else ``~/.cache/recast_mcore``."""
    env = os.environ.get("RECAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recast_mcore"


def ml100k_dir() -> Path:
    return cache_dir() / "ml-100k"


def ml100k_files_present(directory: Path | None = None) -> bool:
    directory = directory or ml100k_dir()
    return all((directory / name).is_file() for name in ML100K_MEMBERS)


def fetch_ml100k(force: bool = False, python: str = sys.executable) -> Path:
    """Make sure ``<cache>/ml-100k/ml-100k.{inter,item}`` exist; returns that directory.

    Raises ``RuntimeError`` with pip's output when the download fails (e.g. no network).
    """
    target = ml100k_dir()
    if ml100k_files_present(target) and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="recast_fetch_") as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", RECBOLE_PIN, "-d", tmp, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {RECBOLE_PIN} produced no wheel in {tmp}")
        extract_ml100k(wheels[0], target)
    return target


def extract_ml100k(wheel: Path, target: Path) -> None:
    """Copy the ml-100k members out of the wheel zip into ``target`` (atomic per file)."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for out_name, member in ML100K_MEMBERS.items():
            if member not in names:
                raise RuntimeError(f"{wheel.name} has no member {member}")
            tmp = target / (out_name + ".tmp")
            tmp.write_bytes(zf.read(member))
            tmp.replace(target / out_name)
