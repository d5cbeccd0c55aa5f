"""The shared value checks: integers that are not booleans, real numbers, booleans, folders.

Python's ``bool`` is a subclass of ``int``, so ``isinstance(True, int)`` holds and a config value
``epochs: true`` would pass a plain ``isinstance`` test as ``1``.  Every layer (models,
simulator, training, sweeps) checks its integer, number and boolean arguments here instead.
The ``name`` given is quoted in the error as the caller wants the value named (a config key
with its section, or a constructor argument).
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

__all__ = ["is_int", "is_number", "check_int", "check_bool", "check_folder"]


def is_int(value) -> bool:
    """An integer (Python or NumPy) that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value, *, finite: bool = False) -> bool:
    """A real number (int or float, Python or NumPy) that is not a ``bool``; ``finite`` also
    refuses NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) if finite else True


def check_int(name: str, value, minimum: int | None = None, *, null: bool = False) -> int | None:
    """``int(value)`` if it is an integer ``>= minimum`` (or None when ``null``).

    Raises
    ------
    ValueError
        ``"<name> must be an integer[ >= minimum][ or null], got <value>"``.
    """
    if value is None and null:
        return None
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}{' or null' if null else ''}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0/1, not a string).

    Raises
    ------
    ValueError
        ``"<name> must be true or false, got <value>"``.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_folder(name: str, path) -> Path:
    """``Path(path)`` if it is a folder or could be made one (nothing on the way is a file).

    Called before any work, so a command that would train for minutes does not fail at its
    first write; the folder itself is not created.

    Raises
    ------
    ValueError
        ``"<name> <path> is a file, not a folder; choose another <name>"``, or ``"... is inside
        <file>, which is a file, not a folder; ..."`` when one of its parents is a file.
    """
    path = Path(str(path))
    for part in (path, *path.parents):
        if part.exists():
            if part.is_dir():
                return path
            where = "is a file, not a folder" if part == path else f"is inside {part}, which is a file, not a folder"
            raise ValueError(f"{name} {path} {where}; choose another {name}")
    return path
