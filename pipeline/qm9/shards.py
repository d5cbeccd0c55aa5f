"""HDF5 shard format of the preprocessed QM9 data (one file per Dask partition).

File ``shard_NNNNN.h5`` (``M`` molecules, ``A`` atoms in total, ``E`` bonds in total)::

    gdb_id                  [M]       int64    1-based QM9 id, ascending
    split                   [M]       int8     0 train, 1 valid, 2 test
    bond_perception_failed  [M]       bool     orders not perceived: bonds kept as single bonds
    atom_offsets            [M+1]     int64    atoms of molecule k: atom_offsets[k]:atom_offsets[k+1]
    atomic_numbers          [A]       uint8    1 6 7 8 9
    positions               [A, 3]    float64  angstrom
    bond_offsets            [M+1]     int64    bonds of molecule k: bond_offsets[k]:bond_offsets[k+1]
    bonds                   [E, 3]    int32    rows (i, j, type), i < j molecule-local atom indices,
                                               type 1 single, 2 double, 3 triple, 4 aromatic
    targets                 [M, 15]   float64  attrs: names (A B C mu alpha homo lumo gap r2 zpve
                                               U0 U H G Cv), units (source units: GHz, D, ...)
    smiles                  [M]       str      GDB-17 SMILES from the source ("" if none)

    attrs: format_version, shard_index, plan_hash (identifies source + ids + split + settings),
           n_records (given to the parser) = n_molecules + n_skipped, n_bond_perception_failed,
           first_gdb_id, last_gdb_id, split_counts (JSON), bond_methods (JSON),
           skipped (JSON list of {name, line, reason}), complete = True (written last)

``manifest.json`` beside the shards lists them (file, plan_hash, counts) with the source, the
full config, the counts of every stage, the skipped records and timings.

A shard is written to a unique temporary name (``.shard_NNNNN.h5.tmp-<host>-<pid>-<tag>``,
:func:`invattn.files.temp_path`) and renamed into place, so a killed or retried task never leaves a half-written ``shard_NNNNN.h5``.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from invattn.files import TMP_MARK, atomic_path
from invattn.pipeline.qm9.parse import TARGET_NAMES, TARGET_UNITS

__all__ = ["SHARD_FORMAT_VERSION", "MANIFEST_NAME", "MANIFEST_FORMAT", "shard_name", "is_temp_name", "write_shard",
           "read_shard", "shard_attrs", "shard_is_valid"]

SHARD_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "invattn-qm9-shards"


def shard_name(index: int) -> str:
    """``shard_00012.h5``."""
    return f"shard_{index:05d}.h5"


def is_temp_name(name: str) -> bool:
    return name.startswith(".shard_") and TMP_MARK in name


def write_shard(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write one shard atomically (temp file in the same folder, fsync, rename).

    ``arrays`` holds the datasets of the module docstring; ``attrs`` the file attributes
    (dicts/lists are stored as JSON text).
    """
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            if key == "smiles":
                f.create_dataset(key, data=np.array(value, dtype=object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(key, data=value)
        f["targets"].attrs["names"] = list(TARGET_NAMES)
        f["targets"].attrs["units"] = [TARGET_UNITS[k] for k in TARGET_NAMES]
        f["positions"].attrs["units"] = "angstrom"
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        f.attrs["format_version"] = SHARD_FORMAT_VERSION
        f.attrs["complete"] = True  # last write: a file without it was cut short


def shard_attrs(path: Path) -> dict:
    """File attributes of a shard (JSON attributes decoded)."""
    with h5py.File(path, "r") as f:
        out = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key in ("split_counts", "skipped", "bond_methods"):
                value = json.loads(value)
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
    return out


def shard_is_valid(path: Path, plan_hash: str) -> bool:
    """True when ``path`` is a complete shard of the current format written for ``plan_hash``."""
    try:
        attrs = shard_attrs(path)
    except (OSError, KeyError, ValueError):
        return False  # missing, truncated or not HDF5
    return (attrs.get("complete") is True and attrs.get("plan_hash") == plan_hash
            and attrs.get("format_version") == SHARD_FORMAT_VERSION)


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """All datasets of a shard as numpy arrays (``smiles`` as a list of str)."""
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in f.keys() if k != "smiles"}
        out["smiles"] = [s.decode() if isinstance(s, bytes) else s for s in f["smiles"][()]]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["targets"].attrs["names"]]
    if tuple(names) != TARGET_NAMES:
        raise ValueError(f"{path}: targets.names {names} differ from {list(TARGET_NAMES)}")
    return out
