"""Atomic training checkpoints (DESIGN section 7: temp file + rename; no pickle of code).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, loaded with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a readable checkpoint of this project (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: it is truncated or not an invattn "
                         f"checkpoint ({type(exc).__name__}: {first})") from exc
    missing = {"model", "epoch", "config"} - set(state)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}; not an invattn checkpoint")
    return state
