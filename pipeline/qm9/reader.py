"""Read the output of ``invattn preprocess-qm9`` back, after validating it.

:func:`load_manifest` checks the manifest and that every shard it lists is present, complete
and the very file the manifest recorded (same ``plan_hash`` and molecule count) -- a missing or
replaced shard is an error, never silently fewer molecules.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from invattn.pipeline.qm9.parse import TARGET_NAMES
from invattn.pipeline.qm9.shards import MANIFEST_FORMAT, MANIFEST_NAME, SHARD_FORMAT_VERSION, read_shard, shard_attrs
from invattn.pipeline.qm9.split import SPLIT_NAMES

__all__ = ["load_manifest", "iter_shards", "read_processed"]


def load_manifest(out_dir: str | Path) -> dict:
    """The validated manifest of a finished preprocessing run.

    Raises
    ------
    FileNotFoundError
        No manifest, or a shard it lists is missing.
    ValueError
        Manifest of another format/version, an unfinished run, or a shard that does not match.
    """
    out = Path(out_dir)
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `invattn preprocess-qm9 out={out}` first")
    try:
        m = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if m.get("format") != MANIFEST_FORMAT or m.get("format_version") != SHARD_FORMAT_VERSION:
        raise ValueError(f"{path}: format {m.get('format')!r} v{m.get('format_version')} is not "
                         f"{MANIFEST_FORMAT!r} v{SHARD_FORMAT_VERSION}")
    if m.get("status") != "complete":
        raise ValueError(f"{path}: the preprocessing run did not finish (status {m.get('status')!r}); "
                         f"re-run the same preprocess-qm9 command to complete it")
    for s in m["shards"]:
        shard = out / s["file"]
        if not shard.is_file():
            raise FileNotFoundError(f"{shard} is listed in {path} but missing")
        try:
            attrs = shard_attrs(shard)
        except OSError as exc:
            raise ValueError(f"{shard}: cannot be read as HDF5 ({exc})") from None
        if attrs.get("plan_hash") != s["plan_hash"] or attrs.get("n_molecules") != s["n_molecules"] \
                or attrs.get("complete") is not True:
            raise ValueError(f"{shard} does not match {path} (plan_hash/n_molecules differ or the "
                             f"file is incomplete); re-run preprocess-qm9")
    return m


def iter_shards(out_dir: str | Path, manifest: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield the arrays of each shard (see :mod:`pipeline.qm9.shards`) in manifest order."""
    m = manifest if manifest is not None else load_manifest(out_dir)
    for s in m["shards"]:
        yield read_shard(Path(out_dir) / s["file"])


def read_processed(out_dir: str | Path) -> Iterator[dict]:
    """Yield one dict per molecule of a preprocessed QM9 folder, ascending gdb id.

    Keys: ``gdb_id`` (int); ``atomic_numbers`` ``[n]`` uint8; ``positions`` ``[n, 3]`` float64
    angstrom; ``bonds`` ``{"pairs": [m, 2] int, "types": [m] int}`` (1 single, 2 double,
    3 triple, 4 aromatic); ``targets`` dict keyed by ``A B C mu alpha homo lumo gap r2 zpve U0
    U H G Cv`` in the source units (Hartree, D, bohr^3, GHz, ...); ``split`` ``"train"``,
    ``"valid"`` or ``"test"``; ``bond_perception_failed`` (bool); ``smiles`` (str).

    The manifest and every shard are validated before the first molecule is yielded
    (see :func:`load_manifest` for the errors).
    """
    m = load_manifest(out_dir)
    for a in iter_shards(out_dir, m):
        ao, bo = a["atom_offsets"], a["bond_offsets"]
        for k in range(len(a["gdb_id"])):
            b = a["bonds"][bo[k]:bo[k + 1]]
            yield {
                "gdb_id": int(a["gdb_id"][k]),
                "atomic_numbers": a["atomic_numbers"][ao[k]:ao[k + 1]],
                "positions": a["positions"][ao[k]:ao[k + 1]],
                "bonds": {"pairs": b[:, :2], "types": b[:, 2]},
                "targets": dict(zip(TARGET_NAMES, a["targets"][k].tolist())),
                "split": SPLIT_NAMES[int(a["split"][k])],
                "bond_perception_failed": bool(a["bond_perception_failed"][k]),
                "smiles": a["smiles"][k],
            }
