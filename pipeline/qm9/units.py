"""Units of the QM9 targets: source units (files, shards) -> the paper's reporting units.

Source: QM9 (Ramakrishnan et al. 2014) stores energies in Hartree; the paper (Table 2, like
Cormorant and SE(3)-Transformer) reports homo / lumo / gap in meV, mu in D, alpha in bohr^3,
Cv in cal/(mol K).  The other targets are reported as stored, with their unit named.
1 Hartree = 27.211386 eV (CODATA 2018: 27.211386245988 eV).
"""
from __future__ import annotations

from invattn.pipeline.qm9.parse import TARGET_NAMES, TARGET_UNITS

__all__ = ["HARTREE_TO_EV", "HARTREE_TO_MEV", "PAPER_UNITS", "PAPER_FACTORS", "to_paper_units"]

HARTREE_TO_EV = 27.211386
HARTREE_TO_MEV = HARTREE_TO_EV * 1000.0

#: Target -> unit used when reporting MAE.
PAPER_UNITS: dict[str, str] = {name: TARGET_UNITS[name] for name in TARGET_NAMES}
PAPER_UNITS.update({"homo": "meV", "lumo": "meV", "gap": "meV"})

#: Target -> multiplicative factor from the source unit to :data:`PAPER_UNITS`.
PAPER_FACTORS: dict[str, float] = {name: 1.0 for name in TARGET_NAMES}
PAPER_FACTORS.update({"homo": HARTREE_TO_MEV, "lumo": HARTREE_TO_MEV, "gap": HARTREE_TO_MEV})


def to_paper_units(target_name: str, values):
    """Convert ``values`` of ``target_name`` from the source units to :data:`PAPER_UNITS`.

    Works on floats, numpy arrays and torch tensors (same type and shape back).

    >>> round(to_paper_units("gap", 0.5048), 3)    # methane's HOMO-LUMO gap, Hartree -> meV
    13736.308
    >>> to_paper_units("alpha", 13.21)
    13.21

    Raises ``KeyError`` for an unknown target name.
    """
    if target_name not in PAPER_FACTORS:
        raise KeyError(f"unknown QM9 target {target_name!r}; choose one of {' '.join(TARGET_NAMES)}")
    factor = PAPER_FACTORS[target_name]
    return values * factor if factor != 1.0 else values
