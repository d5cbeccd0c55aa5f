"""Bond perception from a QM9 geometry with RDKit (``rdDetermineBonds``, the xyz2mol method).

Strategy, in order (each step only when the previous one failed):

1. ``DetermineConnectivity`` (connect-the-dots), then a *valence repair*: an atom with more
   neighbours than its element allows (C 4, N 4, O 2, F 1, H 1) loses its most stretched
   bond (largest distance / sum of covalent radii).  Why: the bridgehead carbons of
   bicyclo[1.1.0]butane- and bicyclo[1.1.1]pentane-like cages sit ~1.86 A apart, inside the
   connect-the-dots cutoff, and the extra "bond" makes ``DetermineBondOrders`` fail for ~5 % of
   QM9.  Then ``DetermineBondOrders(charge=0)`` (charged fragments allowed: QM9 has zwitterions;
   ``embedChiral=False`` plus a sanitization limited to ring and aromaticity perception: the 3D
   chirality pass costs more than the rest and does not change bond types).
2. Extended-Hueckel connectivity (``useHueckel=True``, ~20x slower), then bond orders again.
3. Give up on orders: keep the connectivity as single bonds and flag the molecule
   (``failed=True``); it is stored, never dropped.

Bond type codes (shards, datasets, ``bond_types`` of the model): 0 no bond, 1 single,
2 double, 3 triple, 4 aromatic (RDKit aromaticity after sanitization).
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

__all__ = ["BOND_TYPES", "MAX_DEGREE", "BondPerception", "perceive_bonds", "perceived_smiles", "canonical_smiles"]

RDLogger.DisableLog("rdApp.*")  # failures are counted and reported by us, not logged per atom

#: Bond type code -> name.
BOND_TYPES: dict[int, str] = {0: "none", 1: "single", 2: "double", 3: "triple", 4: "aromatic"}
#: Largest number of bonded neighbours per element (N 4: ammonium in QM9's zwitterions).
MAX_DEGREE: dict[int, int] = {1: 1, 6: 4, 7: 4, 8: 2, 9: 1}
_STDERR_LOCK = threading.Lock()


@dataclass(frozen=True)
class BondPerception:
    """Bonds of one molecule.

    Attributes
    ----------
    pairs : np.ndarray
        ``[m, 2]`` int32 atom indices, ``i < j``, sorted.
    types : np.ndarray
        ``[m]`` int8 codes 1-4 (see :data:`BOND_TYPES`).
    failed : bool
        Bond orders could not be perceived; ``types`` are all single bonds.
    method : str
        ``"connect-the-dots"``, ``"valence-repaired"``, ``"hueckel"`` or ``"connectivity-only"``.
    """

    pairs: np.ndarray
    types: np.ndarray
    failed: bool
    method: str


_MAX_DEG_TABLE = np.full(119, 4, dtype=np.int64)
for _z, _d in MAX_DEGREE.items():
    _MAX_DEG_TABLE[_z] = _d
_RCOV_TABLE = np.array([Chem.GetPeriodicTable().GetRcovalent(z) for z in range(119)])
# What DetermineBondOrders(embedChiral=True) would run, minus the 3D chirality pass that is
# ~60 % of its cost and is not needed for bond types (same types on every sample molecule).
_SANITIZE = (Chem.SanitizeFlags.SANITIZE_PROPERTIES | Chem.SanitizeFlags.SANITIZE_SYMMRINGS
             | Chem.SanitizeFlags.SANITIZE_SETAROMATICITY)


def _mol(atomic_numbers: np.ndarray, positions: np.ndarray) -> Chem.RWMol:
    mol = Chem.RWMol()
    for z in atomic_numbers.tolist():
        mol.AddAtom(Chem.Atom(z))
    conf = Chem.Conformer(len(atomic_numbers))
    conf.SetPositions(np.ascontiguousarray(positions, dtype=np.float64))
    mol.AddConformer(conf, assignId=True)
    return mol


def _connectivity(mol: Chem.RWMol, z: np.ndarray, pos: np.ndarray, repair: bool) -> tuple[np.ndarray, bool]:
    """Adjacency matrix of ``mol``; with ``repair``, first remove the most stretched bond of
    each over-bonded atom (in ``mol`` too) until none is left.  Returns (adjacency, repaired)."""
    adj = Chem.GetAdjacencyMatrix(mol, force=True)  # force: RDKit caches this matrix on the mol
    over = np.nonzero(adj.sum(1) > _MAX_DEG_TABLE[z])[0] if repair else ()
    if len(over) == 0:  # the common case: nothing to repair
        return adj, False
    stretch = np.linalg.norm(pos[:, None] - pos[None], axis=-1) / (_RCOV_TABLE[z][:, None] + _RCOV_TABLE[z][None])
    for i in over.tolist():
        while adj[i].sum() > _MAX_DEG_TABLE[z[i]]:
            nbrs = np.nonzero(adj[i])[0]
            j = int(nbrs[np.argmax(stretch[i, nbrs])])
            mol.RemoveBond(i, j)
            adj[i, j] = adj[j, i] = 0
    return adj, True


_TYPE_OF_2X_ORDER = np.array([1, 1, 1, 4, 2, 1, 3], dtype=np.int8)  # 2*order 2, 3, 4, 6 -> 1, 4, 2, 3


def _bonds(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    # Bond orders from RDKit's C++ adjacency matrix (1, 1.5 aromatic, 2, 3): no loop over bonds.
    order = Chem.GetAdjacencyMatrix(mol, useBO=True, force=True)
    i, j = np.nonzero(order)  # row-major: pairs come out sorted
    keep = i < j
    i, j = i[keep], j[keep]
    pairs = np.empty((len(i), 2), dtype=np.int32)
    pairs[:, 0], pairs[:, 1] = i, j
    return pairs, _TYPE_OF_2X_ORDER[np.minimum((2 * order[i, j]).astype(np.int64), 6)]


def _single(adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.nonzero(adj)
    keep = i < j
    pairs = np.empty((int(keep.sum()), 2), dtype=np.int32)
    pairs[:, 0], pairs[:, 1] = i[keep], j[keep]
    return pairs, np.ones(len(pairs), dtype=np.int8)


def _orders(mol: Chem.RWMol, allow_charged_fragments: bool) -> None:
    rdDetermineBonds.DetermineBondOrders(mol, charge=0, allowChargedFragments=allow_charged_fragments,
                                         embedChiral=False)
    Chem.SanitizeMol(mol, _SANITIZE)


@contextmanager
def _quiet_stderr():
    # YAeHMOP (the Hueckel code) prints "!!! Warning !!! Distance ... is suspicious" for every
    # O-H bond straight to fd 2; silence it for the duration of the call.
    with _STDERR_LOCK:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
            os.close(saved)


def perceive_bonds(atomic_numbers: np.ndarray, positions: np.ndarray, *, valence_repair: bool = True,
                   hueckel_fallback: bool = True, allow_charged_fragments: bool = True) -> BondPerception:
    """Perceive bonds and bond orders of a neutral molecule from its 3D geometry.

    Parameters
    ----------
    atomic_numbers : array ``[n]`` of int
    positions : array ``[n, 3]`` float, angstrom
    valence_repair, hueckel_fallback : bool
        Enable steps 1 (repair) and 2 of the module's strategy.
    allow_charged_fragments : bool
        Passed to ``DetermineBondOrders`` (formal charges instead of radicals).

    Returns
    -------
    BondPerception
        Never raises for a geometry RDKit can hold: failures come back flagged.

    Examples
    --------
    >>> z = np.array([6, 6, 1, 1, 1, 1])           # ethylene
    >>> x = np.array([[0, 0, .667], [0, 0, -.667], [0, .923, 1.238], [0, -.923, 1.238],
    ...               [0, .923, -1.238], [0, -.923, -1.238]])
    >>> perceive_bonds(z, x).types.tolist()
    [2, 1, 1, 1, 1]
    """
    return _perceive(atomic_numbers, positions, valence_repair, hueckel_fallback, allow_charged_fragments)[1]


def perceived_smiles(atomic_numbers: np.ndarray, positions: np.ndarray, **options) -> str | None:
    """Canonical SMILES (no stereo) of the perceived molecule, None if orders were not perceived.

    For checking perception against a source's SMILES (``canonical_smiles(source_smiles)``).
    """
    mol, result = _perceive(atomic_numbers, positions, options.get("valence_repair", True),
                            options.get("hueckel_fallback", True), options.get("allow_charged_fragments", True))
    if result.failed:
        return None
    return canonical_smiles(Chem.MolToSmiles(mol, isomericSmiles=False))  # re-parse: as the source


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES without stereo (None if RDKit cannot parse it)."""
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol, isomericSmiles=False) if mol is not None else None


def _perceive(atomic_numbers, positions, valence_repair, hueckel_fallback, allow_charged_fragments):
    z = np.asarray(atomic_numbers, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    mol = _mol(z, pos)
    rdDetermineBonds.DetermineConnectivity(mol)
    adj, repaired = _connectivity(mol, z, pos, valence_repair)
    try:
        _orders(mol, allow_charged_fragments)
        return mol, BondPerception(*_bonds(mol), False, "valence-repaired" if repaired else "connect-the-dots")
    except Exception:  # RDKit raises ValueError/RuntimeError subclasses for unassignable orders
        pass
    if hueckel_fallback:
        mol = _mol(z, pos)
        try:
            with _quiet_stderr():
                rdDetermineBonds.DetermineConnectivity(mol, useHueckel=True, charge=0)
            adj = Chem.GetAdjacencyMatrix(mol, force=True)
            _orders(mol, allow_charged_fragments)
            return mol, BondPerception(*_bonds(mol), False, "hueckel")
        except Exception:
            pass
    return mol, BondPerception(*_single(adj), True, "connectivity-only")
