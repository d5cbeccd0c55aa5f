"""PyTorch dataset over the preprocessed QM9 shards, and the batch collation for ``models.QM9Model``.

>>> ds = QM9Dataset("data/qm9", "train", "homo")          # doctest: +SKIP
>>> batch = collate_qm9([ds[0], ds[1]])                   # doctest: +SKIP
>>> batch["bond_types"].shape                             # doctest: +SKIP
torch.Size([2, 18, 18])
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from invattn.pipeline.qm9.parse import TARGET_NAMES
from invattn.pipeline.qm9.reader import load_manifest, read_molecules
from invattn.pipeline.qm9.split import SPLIT_CODES

__all__ = ["QM9Dataset", "QM9Batch", "collate_qm9", "target_statistics"]


@dataclass
class QM9Batch:
    """A padded batch of ``B`` molecules, ``N`` = most atoms in the batch (from :func:`collate_qm9`).

    * ``atomic_numbers`` ``[B, N]`` long (0 = padding)
    * ``positions`` ``[B, N, 3]`` float64, angstrom (0 at padding)
    * ``bond_types`` ``[B, N, N]`` long, symmetric, 0 = not bonded, 1-4 single/double/triple/aromatic
    * ``mask`` ``[B, N]`` bool, True for real atoms
    * ``target`` ``[B]`` float64 in the source units
    * ``n_atoms`` ``[B]`` long, ``gdb_id`` ``[B]`` long, ``bond_perception_failed`` ``[B]`` bool

    The first four are the inputs of ``models.QM9Model.forward(atomic_numbers, positions,
    bond_types, mask)``. ``batch["positions"]`` reads a field as ``batch.positions`` does.
    """

    atomic_numbers: torch.Tensor
    positions: torch.Tensor
    bond_types: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    n_atoms: torch.Tensor
    gdb_id: torch.Tensor
    bond_perception_failed: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"QM9Batch has no field {key!r}; fields: {', '.join(self.__dataclass_fields__)}")
        return getattr(self, key)

    def to(self, device, dtype=None) -> "QM9Batch":
        """Moved to ``device``; floating tensors but ``target`` cast to ``dtype`` (targets stay
        float64: U0 is about -400 Ha, and float32 would lose ~1 meV before normalization)."""
        def move(name, t):
            cast = dtype is not None and t.is_floating_point() and name != "target"
            return t.to(device, dtype) if cast else t.to(device)

        return QM9Batch(**{f.name: move(f.name, getattr(self, f.name)) for f in fields(self)})


class QM9Dataset(Dataset):
    """One split of a preprocessed QM9 folder, held in memory (a few tens of MB for train).

    Parameters
    ----------
    out_dir : str or Path
        Output folder of ``invattn preprocess-qm9`` (validated as in
        :func:`pipeline.qm9.read_processed`).
    split : {"train", "valid", "test"}
    target : str
        One of ``A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``; values stay in the source
        units (Hartree for energies; see :mod:`pipeline.qm9.units` for reporting units).

    Items are dicts of tensors: ``atomic_numbers`` ``[n]`` long, ``positions`` ``[n, 3]`` float64
    (angstrom), ``bond_pairs`` ``[m, 2]`` long, ``bond_types`` ``[m]`` long (1-4),
    ``target`` ``[]`` float64, ``gdb_id`` ``[]`` long, ``bond_perception_failed`` ``[]`` bool.

    Raises
    ------
    ValueError
        Unknown split or target; invalid folder (see ``load_manifest``).
    FileNotFoundError
        No manifest or a missing shard.
    """

    def __init__(self, out_dir: str | Path, split: str, target: str):
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
        if target not in TARGET_NAMES:
            raise ValueError(f"unknown QM9 target {target!r}; choose one of {' '.join(TARGET_NAMES)}")
        self.out_dir, self.split, self.target = Path(out_dir), split, target
        self.manifest = load_manifest(out_dir)
        mols = read_molecules(out_dir, split, self.manifest)
        # Concatenated storage with offsets: one tensor per field instead of 100k small ones.
        self._z = torch.from_numpy(mols.atomic_numbers.astype(np.int64))
        self._pos = torch.from_numpy(mols.positions)
        self._bonds = torch.from_numpy(mols.bonds.astype(np.int64))
        self._atom_off = torch.from_numpy(mols.atom_offsets)
        self._bond_off = torch.from_numpy(mols.bond_offsets)
        self.targets = torch.from_numpy(np.ascontiguousarray(mols.targets[:, TARGET_NAMES.index(target)]))
        self.gdb_ids = torch.from_numpy(mols.gdb_id.astype(np.int64))
        self.bond_perception_failed = torch.from_numpy(mols.bond_perception_failed.astype(bool))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} molecules")
        i = i % len(self)
        a0, a1 = int(self._atom_off[i]), int(self._atom_off[i + 1])
        b = self._bonds[int(self._bond_off[i]):int(self._bond_off[i + 1])]
        return {"atomic_numbers": self._z[a0:a1], "positions": self._pos[a0:a1],
                "bond_pairs": b[:, :2], "bond_types": b[:, 2], "target": self.targets[i],
                "gdb_id": self.gdb_ids[i], "bond_perception_failed": self.bond_perception_failed[i]}

    def __repr__(self) -> str:
        return f"QM9Dataset({str(self.out_dir)!r}, split={self.split!r}, target={self.target!r}, n={len(self)})"


def collate_qm9(batch: list[dict[str, torch.Tensor]]) -> QM9Batch:
    """Pad a list of :class:`QM9Dataset` items to the largest molecule of the batch (a :class:`QM9Batch`)."""
    if not batch:
        raise ValueError("collate_qm9 needs at least one molecule")
    n_atoms = torch.tensor([len(b["atomic_numbers"]) for b in batch], dtype=torch.long)
    B, N = len(batch), int(n_atoms.max())
    z = torch.zeros(B, N, dtype=torch.long)
    pos = torch.zeros(B, N, 3, dtype=batch[0]["positions"].dtype)
    bond_types = torch.zeros(B, N, N, dtype=torch.long)
    for k, item in enumerate(batch):
        n = len(item["atomic_numbers"])
        z[k, :n] = item["atomic_numbers"]
        pos[k, :n] = item["positions"]
        i, j = item["bond_pairs"][:, 0], item["bond_pairs"][:, 1]
        bond_types[k, i, j] = item["bond_types"]
        bond_types[k, j, i] = item["bond_types"]
    mask = torch.arange(N)[None, :] < n_atoms[:, None]
    return QM9Batch(atomic_numbers=z, positions=pos, bond_types=bond_types, mask=mask,
                    target=torch.stack([b["target"] for b in batch]).to(torch.float64), n_atoms=n_atoms,
                    gdb_id=torch.stack([b["gdb_id"] for b in batch]),
                    bond_perception_failed=torch.stack([b["bond_perception_failed"] for b in batch]))


def target_statistics(dataset: QM9Dataset) -> tuple[float, float]:
    """Mean and standard deviation (ddof=0) of the target over the *training* split.

    Normalization statistics must come from the training split only (DESIGN section 8), so any
    other split raises ``ValueError``.  Values are in the source units.
    """
    if getattr(dataset, "split", None) != "train":
        raise ValueError(f"target statistics must come from the training split, not {getattr(dataset, 'split', None)!r}")
    if len(dataset) == 0:
        raise ValueError("the training split is empty")
    y = dataset.targets.to(torch.float64)
    return float(y.mean()), float(y.std(unbiased=False))
