"""Atomic file writes: the one way the project replaces a file (DESIGN section 7, temp file + rename).

A file is written under a hidden temporary name in the SAME folder (so the final ``os.replace``
is a rename within one filesystem, which POSIX makes atomic), flushed to disk with ``fsync``
(so a crash after the rename cannot leave a renamed but empty file), then renamed over the
destination.  Readers therefore see the previous file or the complete new one, never a part.
The temporary name is unique per attempt (host, pid, random tag): a retried or requeued task
never writes into another attempt's file, and stale ones are recognised by :data:`TMP_MARK`.

Used for checkpoints, HDF5 trajectories and QM9 shards, manifests, sweep results and the
sweep job's rendezvous files.  Errors of a failed write become one line via :func:`write_error`.
"""
from __future__ import annotations

import errno
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["TMP_MARK", "temp_path", "commit", "atomic_path", "write_atomic", "write_error"]

# Every temporary name is ``.<final name>.tmp-<host>-<pid>-<tag>``.
TMP_MARK = ".tmp-"


def temp_path(final: Path) -> Path:
    """A unique hidden temporary sibling of ``final`` for one write attempt."""
    final = Path(final)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}{TMP_MARK}{tag}"


def commit(tmp: Path, final: Path) -> Path:
    """``fsync`` the finished temporary file ``tmp`` and rename it onto ``final`` (atomic).

    Raises
    ------
    OSError
        From ``fsync`` or the rename (``tmp`` is left for the caller to remove).
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return Path(final)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path to write ``final``'s new content to; on a clean exit it is committed
    (:func:`commit`), on any exception removed, so ``final`` is the old file or the new one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> final = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(final) as tmp:
    ...     _ = tmp.write_text("done")
    >>> final.read_text(), [p.name for p in final.parent.iterdir()]
    ('done', ['a.txt'])
    """
    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        commit(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(final: Path, data: str | bytes) -> Path:
    """Replace ``final`` with ``data`` (text is written as UTF-8) atomically; returns ``final``.

    Raises
    ------
    OSError
        The write failed (e.g. a full disk); ``final`` is unchanged.  Callers turn it into one
        line with :func:`write_error`.
    """
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return Path(final)


def write_error(path: Path, exc: OSError) -> OSError:
    """A one-line OSError for a failed write of ``path`` (full disk, file size limit, quota)."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large (file size limit)",
               errno.EDQUOT: "disk quota exceeded"}
    code = exc.errno if exc.errno in reasons else next(
        (c for c, r in reasons.items() if os.strerror(c).lower() in str(exc).lower()), None)
    reason = (reasons.get(code) or (exc.strerror.lower() if exc.strerror else None)
              or (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    err = OSError(f"cannot write {path}: {reason}")
    err.errno = code or exc.errno
    return err
