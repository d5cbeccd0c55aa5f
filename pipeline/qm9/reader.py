"""Read the output of ``invattn preprocess-qm9`` back, after validating it.

:func:`load_manifest` checks the manifest and that every shard it lists is present, complete
and the very file the manifest recorded (same ``plan_hash`` and molecule count) -- a missing or
replaced shard is an error, never silently fewer molecules.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from invattn.pipeline.qm9.parse import TARGET_NAMES
from invattn.pipeline.qm9.shards import MANIFEST_FORMAT, MANIFEST_NAME, SHARD_FORMAT_VERSION, read_shard, shard_attrs
from invattn.pipeline.qm9.split import SPLIT_NAMES

__all__ = ["load_manifest", "iter_shards", "read_processed", "Molecules", "read_molecules"]


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
        other = (f" ({out} holds N-body trajectories, train.h5: train on them with task=nbody)"
                 if (out / "train.h5").is_file() else "")
        raise FileNotFoundError(f"{path} not found: run `invattn preprocess-qm9 out={out}` first{other}")
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


@dataclass
class Molecules:
    """Molecules in the shard layout (:mod:`pipeline.qm9.shards`): per-molecule arrays ``[M]``
    (``gdb_id``, ``split`` codes, ``bond_perception_failed``, ``targets`` ``[M, 15]``,
    ``smiles``), per-atom ``atomic_numbers`` / ``positions`` and per-bond ``bonds`` ``[E, 3]``
    rows ``(i, j, type)``, sliced by ``atom_offsets`` / ``bond_offsets`` ``[M+1]``.

    The one decoder of that layout: :func:`read_processed` yields its molecules one by one,
    :class:`~pipeline.qm9.dataset.QM9Dataset` holds one split of it as tensors.
    """

    gdb_id: np.ndarray
    split: np.ndarray
    bond_perception_failed: np.ndarray
    targets: np.ndarray
    smiles: list
    atom_offsets: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    bond_offsets: np.ndarray
    bonds: np.ndarray

    @classmethod
    def from_shard(cls, arrays: dict) -> "Molecules":
        return cls(**{name: arrays[name] for name in cls.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.gdb_id)

    def select(self, keep: np.ndarray) -> "Molecules":
        """The molecules where ``keep`` (``[M]`` bool) is true, offsets rebuilt."""
        n_atoms, n_bonds = np.diff(self.atom_offsets), np.diff(self.bond_offsets)
        offsets = lambda counts: np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)  # noqa: E731
        return Molecules(
            gdb_id=self.gdb_id[keep], split=self.split[keep],
            bond_perception_failed=self.bond_perception_failed[keep], targets=self.targets[keep],
            smiles=[s for s, k in zip(self.smiles, keep) if k],
            atom_offsets=offsets(n_atoms), bond_offsets=offsets(n_bonds),
            # the per-molecule choice spread over its atoms and bonds
            atomic_numbers=self.atomic_numbers[np.repeat(keep, n_atoms)],
            positions=self.positions[np.repeat(keep, n_atoms)], bonds=self.bonds[np.repeat(keep, n_bonds)])

    @staticmethod
    def concatenate(parts: list["Molecules"]) -> "Molecules":
        """One set of the molecules of ``parts``, in order (an empty set for no parts)."""
        if not parts:
            return Molecules(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, bool),
                             np.zeros((0, len(TARGET_NAMES))), [], np.zeros(1, np.int64),
                             np.zeros(0, np.uint8), np.zeros((0, 3)), np.zeros(1, np.int64),
                             np.zeros((0, 3), np.int32))
        join = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731

        def offsets(name):
            counts = np.concatenate([np.diff(getattr(p, name)) for p in parts])
            return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        return Molecules(
            gdb_id=join("gdb_id"), split=join("split"), bond_perception_failed=join("bond_perception_failed"),
            targets=join("targets"), smiles=[s for p in parts for s in p.smiles],
            atom_offsets=offsets("atom_offsets"), atomic_numbers=join("atomic_numbers"),
            positions=join("positions"), bond_offsets=offsets("bond_offsets"), bonds=join("bonds"))

    def molecule(self, k: int) -> dict:
        """Molecule ``k`` as :func:`read_processed` yields it."""
        ao, bo = self.atom_offsets, self.bond_offsets
        b = self.bonds[bo[k]:bo[k + 1]]
        return {
            "gdb_id": int(self.gdb_id[k]),
            "atomic_numbers": self.atomic_numbers[ao[k]:ao[k + 1]],
            "positions": self.positions[ao[k]:ao[k + 1]],
            "bonds": {"pairs": b[:, :2], "types": b[:, 2]},
            "targets": dict(zip(TARGET_NAMES, self.targets[k].tolist())),
            "split": SPLIT_NAMES[int(self.split[k])],
            "bond_perception_failed": bool(self.bond_perception_failed[k]),
            "smiles": self.smiles[k],
        }


def read_molecules(out_dir: str | Path, split: str | None = None, manifest: dict | None = None) -> Molecules:
    """Every molecule of a preprocessed QM9 folder (or of one ``split``), validated as by
    :func:`load_manifest` (unless its ``manifest`` is given), held in memory in the shard layout."""
    code = None if split is None else SPLIT_NAMES.index(split)
    parts = [Molecules.from_shard(a) for a in iter_shards(out_dir, manifest)]
    return Molecules.concatenate([p if code is None else p.select(p.split == code) for p in parts])


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
    for a in iter_shards(out_dir, m):  # one shard in memory at a time
        molecules = Molecules.from_shard(a)
        for k in range(len(molecules)):
            yield molecules.molecule(k)
