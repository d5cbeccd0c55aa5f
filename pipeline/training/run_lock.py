"""One run per ``run_dir`` at a time: an exclusive ``flock`` on ``run_dir/.lock``.

Two ``invattn train`` processes on one ``run_dir`` would both append epochs to
``metrics.jsonl`` and overwrite each other's checkpoints.  The kernel drops the lock when its
holder exits, even on ``kill -9``, so a crashed run never leaves a stale lock behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

__all__ = ["RunDirBusyError", "run_dir_lock"]


class RunDirBusyError(OSError):
    """Another process holds the run directory (the message names it and the holder)."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold ``run_dir``'s lock for the ``with`` block (the folder is created if needed).

    Raises
    ------
    RunDirBusyError
        Another process holds it; nothing in ``run_dir`` was changed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusyError(f"run_dir {run_dir} is in use by another run ({holder}); wait for it "
                                  f"to finish or choose another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
