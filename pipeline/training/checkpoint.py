"""Atomic training checkpoints (DESIGN section 7: temp file + rename; no pickle of code).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, loaded with
``torch.load(..., weights_only=True)``. Each carries ``model_format``
(:data:`models.registry.MODEL_FORMAT`); checkpoints of another format (files from before the
field existed are format 1) are refused with a message saying what to do, since their weights
do not fit today's models.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from invattn.models.registry import MODEL_FORMAT, MODEL_FORMATS
from invattn.files import write_atomic, write_error

__all__ = ["save_checkpoint", "load_checkpoint", "write_text_atomic", "cannot_write"]


def cannot_write(path: Path, exc: OSError, kept: str = "") -> OSError:
    """:func:`invattn.files.write_error`'s one-line OSError, followed by ``; kept`` if given."""
    err = write_error(path, exc)
    if kept:
        err.args = (f"{err}; {kept}",)
    return err


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`invattn.files.write_atomic`): a full
    disk keeps the old file and raises one line naming ``path``."""
    path = Path(path)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise cannot_write(path, exc, "the previous file is kept" if path.is_file() else "") from None


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file intact).

    ``state["model_format"]`` is set to the current :data:`~models.registry.MODEL_FORMAT`
    unless the caller gives one.

    Raises
    ------
    OSError
        The file could not be written, e.g. ``no space left on device``; one line naming
        ``path``; the previous checkpoint is kept.
    """
    state = {"model_format": MODEL_FORMAT, **state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise in memory, then write with plain file I/O: a full disk is then an OSError with
    # its errno, not an error from inside torch's zip writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
        err = cannot_write(path, exc, kept)
        err.args = (str(err).replace("cannot write ", "cannot write checkpoint ", 1),)
        raise err from None
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    IsADirectoryError
        ``path`` is a folder (a run_dir, say); the message suggests the checkpoint file in it.
    ValueError
        The file is not a readable checkpoint of this project, or holds another model format
        (the message names the file and what to do).
    """
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()]
        found = found or sorted(path.rglob("*.pt"))[:3]
        hint = (f"; did you mean {' or '.join(map(str, found))}?" if found
                else " and holds no .pt file (a run's checkpoint is <run_dir>/checkpoints/last.pt)")
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # torch's messages go on with advice (weights_only=False, ...) that does not apply here
        first = first.split(". ")[0].rstrip(".")
        raise ValueError(f"cannot read checkpoint {path}: it is truncated or not an invattn "
                         f"checkpoint ({type(exc).__name__}: {first})") from exc
    missing = {"model", "epoch", "config"} - set(state)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}; not an invattn checkpoint")
    found = state.get("model_format", 1)
    if found != MODEL_FORMAT:
        what = MODEL_FORMATS.get(found, "unknown to this version")
        raise ValueError(
            f"checkpoint {path} holds model format {found} ({what}); this invattn builds format "
            f"{MODEL_FORMAT} ({MODEL_FORMATS[MODEL_FORMAT]}), which cannot load its weights: "
            f"retrain in a new run_dir, or evaluate it with the invattn of its format "
            f"(format 1: `git checkout f846133~1`)")
    return state
