"""One ``recast-train`` per run directory: ``<run_dir>/run.lock``.

Rank 0 holds an exclusive ``flock`` on the file for the life of the job and writes its PID, host and start
time into it. The kernel drops the lock when the process exits, however it exits (SIGKILL included), so a
lock left by a dead process is free: the next job takes it and says whose it was. The file is never
deleted (unlinking a lock file lets two processes lock two different inodes); a clean exit empties it.

Under torchrun only global rank 0 locks, after the process group exists; the outcome is broadcast, so
on a refusal every rank raises the same ``SetupError`` (exit code 2) instead of waiting for a rank 0 that
left. The host name is in the file because ranks and a second job may run on other nodes. On NFS, Linux
maps ``flock`` to a POSIX lock that the server holds for the client; a crashed client's lock is released
when its lease expires (about 90 s).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

# trainer.checks and utils.dist (torch) are imported inside ``acquire``: ``try_lock`` loads in a bare process.

LOCK_NAME = "run.lock"


class RunLock:
    """An acquired lock (rank 0); ``release`` empties the file and unlocks."""

    def __init__(self, path: Path, fd: int, previous: dict | None) -> None:
        self.path = path
        self.fd: int | None = fd
        self.previous = previous
        """The holder recorded in the file when we took it over (a process that died), else None."""

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text}


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "an unknown process"
    if "pid" not in holder:
        return f"an unknown process ({holder.get('raw', '')[:80]!r})"
    return f"PID {holder['pid']} on host {holder.get('host', '?')} (started {holder.get('started', '?')})"


def try_lock(run_dir: str | Path) -> RunLock | str:
    """Take ``run_dir``'s lock now (no waiting): the lock, or a message naming the holder."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        return (f"run directory {path.parent} is in use by another recast-train: {describe_holder(holder)}; lock file {path}. "
                f"Wait for it to finish or stop it, or set another run_dir.")
    previous = _read_holder(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "argv": sys.argv[:8]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    os.fsync(fd)
    return RunLock(path, fd, previous)


def acquire(run_dir: str | Path) -> RunLock | None:
    """Collective (after the process group exists): rank 0 takes the lock, every rank learns the outcome;
    a refusal raises ``SetupError`` on every rank. Returns the lock on rank 0, None elsewhere."""
    from recast_mcore.trainer.checks import SetupError
    from recast_mcore.utils.dist import broadcast_object, is_rank0

    result = None
    if is_rank0():
        try:
            result = try_lock(run_dir)
        except OSError as exc:  # broadcast, never leave the other ranks waiting
            result = f"cannot lock run directory {run_dir}: {exc}"
    refusal = broadcast_object(result if isinstance(result, str) else None)
    if refusal:
        raise SetupError(refusal)
    return result
