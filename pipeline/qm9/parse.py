"""Parse one QM9 molecule from either source form into a :class:`Molecule`.

Source: QM9 (Ramakrishnan et al., Scientific Data 1, 140022, 2014), two layouts:

* the original archive: one ``dsgdb9nsd_NNNNNN.xyz`` file per molecule (tab separated)::

      line 1          n_atoms
      line 2          gdb <id> A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv
      lines 3..n+2    element x y z mulliken_charge        (angstrom, e)
      line n+3        3n-6 (3n-5 if linear) harmonic frequencies (cm^-1)
      line n+4        SMILES (GDB-17) <tab> SMILES (relaxed geometry)
      line n+5        InChI <tab> InChI

  Numbers use Mathematica notation in places: ``1.2*^-6`` is ``1.2e-6`` and ``0.`` is zero.
* the ``qm9pack`` 1.0.3 CSV: one row per molecule; list columns (``Elements``, ``XYZ_Ang``)
  are Python literals (``[[0.59,0.,1.],...]``, parsed without ``eval``); the 15 properties are
  in the source units.

Both give identical :class:`Molecule` objects (same atoms, positions in angstrom, targets keyed
by the raw header names in the source's units: GHz, D, bohr^3, Hartree, bohr^2, cal/(mol K)).
Anything unexpected raises :class:`MalformedRecordError` naming the file and line.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TARGET_NAMES", "TARGET_UNITS", "ELEMENTS", "CSV_COLUMNS", "Molecule", "MalformedRecordError",
    "parse_number", "parse_xyz", "parse_csv_row", "split_csv_line", "gdb_id_from_name",
]

#: The 15 properties of line 2 of a QM9 ``.xyz`` file, in file order.
TARGET_NAMES: tuple[str, ...] = (
    "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
#: Units of the targets as stored in both source forms (and in the shards).
TARGET_UNITS: dict[str, str] = {
    "A": "GHz", "B": "GHz", "C": "GHz", "mu": "D", "alpha": "bohr^3", "homo": "Hartree",
    "lumo": "Hartree", "gap": "Hartree", "r2": "bohr^2", "zpve": "Hartree", "U0": "Hartree",
    "U": "Hartree", "H": "Hartree", "G": "Hartree", "Cv": "cal/(mol K)"}
#: Element symbol -> atomic number for the five QM9 elements.
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
#: Target name -> qm9pack CSV column ("Enthalphy" is the package's spelling).
CSV_COLUMNS: dict[str, str] = {
    "A": "RotA_GHz", "B": "RotB_GHz", "C": "RotC_GHz", "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3", "homo": "HOMO_au", "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au", "r2": "R2_bohr2", "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au", "U": "InternalEnergy_298K_au", "H": "Enthalphy_298K_au",
    "G": "GibbsFreeEnergy_298K_au", "Cv": "Heatcapacity_Cv_cal_mol_K"}
#: CSV columns the parser needs besides the targets.
CSV_MOLECULE_COLUMNS = ("XYZ_file", "Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang")

_NAME = re.compile(r"^dsgdb9nsd_(\d+)\.xyz$")


class MalformedRecordError(ValueError):
    """A source record cannot be parsed; ``source`` and ``line`` locate it (line is 1-based)."""

    def __init__(self, source: str, line: int | None, message: str):
        where = f"{source} line {line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.reason = source, line, message


@dataclass
class Molecule:
    """One QM9 molecule.

    Attributes
    ----------
    gdb_id : int
        1-based QM9 index (``gdb <id>`` / ``Index``).
    atomic_numbers : np.ndarray
        ``[n]`` uint8, elements H C N O F as 1 6 7 8 9.
    positions : np.ndarray
        ``[n, 3]`` float64, angstrom.
    targets : dict[str, float]
        The 15 properties keyed by :data:`TARGET_NAMES`, in :data:`TARGET_UNITS`.
    smiles : str or None
        The GDB-17 SMILES when the source gives one.
    """

    gdb_id: int
    atomic_numbers: np.ndarray
    positions: np.ndarray
    targets: dict[str, float]
    smiles: str | None = None

    def targets_array(self) -> np.ndarray:
        """``[15]`` float64 in :data:`TARGET_NAMES` order."""
        return np.array([self.targets[k] for k in TARGET_NAMES], dtype=np.float64)


def parse_number(token: str) -> float:
    """Parse a QM9 number, including Mathematica notation.

    >>> parse_number("1.2*^-6"), parse_number("0."), parse_number("-8.4813*^-5")
    (1.2e-06, 0.0, -8.4813e-05)

    Raises ``ValueError`` for anything that is not a finite number.
    """
    value = float(token.replace("*^", "e"))  # "0." and "1.e-4" are valid Python floats
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {token!r}")
    return value


def _number(token: str, source: str, line: int, what: str) -> float:
    try:
        return parse_number(token)
    except ValueError:
        raise MalformedRecordError(source, line, f"{what}: bad number {token!r}") from None


def _floats(tokens: list[str], source: str, locate) -> list[float]:
    """Convert many tokens at once; only when one is bad, find it and name it.

    ``locate(k)`` gives ``(line, what)`` of token ``k`` for the error message.
    """
    try:
        values = [float(t.replace("*^", "e")) for t in tokens]
        if all(map(math.isfinite, values)):
            return values
    except ValueError:
        pass
    for k, t in enumerate(tokens):  # slow path, for the message only
        _number(t, source, *locate(k))
    raise AssertionError("unreachable")  # pragma: no cover


def gdb_id_from_name(name: str) -> int | None:
    """``dsgdb9nsd_000123.xyz`` (any folder prefix) -> 123; None if the name does not match."""
    m = _NAME.match(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def parse_xyz(text: str, source: str) -> Molecule:
    """Parse the text of one ``dsgdb9nsd_*.xyz`` file.

    Parameters
    ----------
    text : str
        Whole file content.
    source : str
        Name used in error messages (file name, or ``archive:member``).

    Raises
    ------
    MalformedRecordError
        Truncated file, atom count that does not match the atom lines, unknown element,
        bad number, id on line 2 different from the file name's id.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise MalformedRecordError(source, 1, "empty file (expected the atom count)")
    try:
        n = int(lines[0].strip())
    except ValueError:
        raise MalformedRecordError(source, 1, f"atom count {lines[0].strip()!r} is not an integer") from None
    if n < 1:
        raise MalformedRecordError(source, 1, f"atom count {n} must be positive")
    if len(lines) < 2:
        raise MalformedRecordError(source, 2, "file ends before the 'gdb <id> ...' property line")
    head = lines[1].split()
    if len(head) != 17 or head[0] != "gdb":
        raise MalformedRecordError(
            source, 2, f"expected 'gdb <id>' and 15 properties, found {len(head)} fields")
    try:
        gdb_id = int(head[1])
    except ValueError:
        raise MalformedRecordError(source, 2, f"gdb id {head[1]!r} is not an integer") from None
    name_id = gdb_id_from_name(source)
    if name_id is not None and name_id != gdb_id:
        raise MalformedRecordError(source, 2, f"gdb id {gdb_id} differs from the file name's id {name_id}")
    targets = dict(zip(TARGET_NAMES, _floats(head[2:], source, lambda k: (2, TARGET_NAMES[k]))))

    z = np.empty(n, dtype=np.uint8)
    numbers: list[str] = []  # x y z charge of every atom, converted in one go below
    for i in range(n):
        lineno = 3 + i
        if lineno > len(lines):
            raise MalformedRecordError(
                source, lineno, f"file ends at atom {i + 1} of {n} (atom count on line 1)")
        fields = lines[lineno - 1].split()
        if len(fields) != 5 or fields[0] not in ELEMENTS:
            raise MalformedRecordError(
                source, lineno, f"expected atom {i + 1} of {n} (atom count on line 1) as "
                f"'element x y z charge', got {lines[lineno - 1][:60]!r}")
        z[i] = ELEMENTS[fields[0]]
        numbers += fields[1:]
    what = ("coordinate x", "coordinate y", "coordinate z", "Mulliken charge")
    values = _floats(numbers, source, lambda k: (3 + k // 4, f"{what[k % 4]} of atom {k // 4 + 1}"))
    pos = np.array(values, dtype=np.float64).reshape(n, 4)[:, :3].copy()

    # The line after the atoms must not be one more atom: a too-small count on line 1 would
    # otherwise silently drop atoms.  (The frequency count is not checked: some QM9 files list
    # their 3n-6 frequencies twice.)
    if len(lines) < n + 5:
        raise MalformedRecordError(
            source, len(lines) + 1, "file is truncated: expected the frequency, SMILES and InChI lines")
    freq = lines[n + 2].split()
    if len(freq) == 5 and freq[0] in ELEMENTS:
        raise MalformedRecordError(
            source, n + 3, f"line 1 says {n} atoms but line {n + 3} is another atom line")
    _floats(freq, source, lambda k: (n + 3, f"harmonic frequency {k + 1}"))
    smiles_fields = lines[n + 3].split()
    if not smiles_fields:
        raise MalformedRecordError(source, n + 4, "missing SMILES")
    return Molecule(gdb_id, z, pos, targets, smiles_fields[0])


def _parse_positions(text: str, n: int, source: str, line: int) -> np.ndarray:
    # The literal "[[x,y,z],[x,y,z],...]" is split by hand: only float() runs on the pieces, so
    # it is as safe as ast.literal_eval, ~10x faster, and thread-safe (CPython 3.11's ast
    # raises "AST constructor recursion depth mismatch" when several threads parse at once).
    s = "".join(text.split())
    if not (s.startswith("[[") and s.endswith("]]")):
        raise MalformedRecordError(source, line, f"column XYZ_Ang is not a list of [x,y,z] lists: {text[:60]!r}")
    rows = s[2:-2].split("],[")
    tokens = ",".join(rows).split(",")
    if len(rows) != n or len(tokens) != 3 * n or any(r.count(",") != 2 for r in rows):
        raise MalformedRecordError(
            source, line, f"column XYZ_Ang has {len(rows)} rows and {len(tokens)} numbers (need {n} rows of 3)")
    values = _floats(tokens, source, lambda k: (line, "column XYZ_Ang"))
    return np.array(values, dtype=np.float64).reshape(n, 3)


_SYMBOL = re.compile(r"""^(['"])([A-Z][a-z]?)\1$""")


def _parse_elements(text: str, n: int, source: str, line: int) -> np.ndarray:
    s = "".join(text.split())
    matches = [_SYMBOL.match(t) for t in s[1:-1].split(",")] if s[:1] == "[" and s[-1:] == "]" else [None]
    if not all(matches):
        raise MalformedRecordError(source, line, f"column Elements is not a list of quoted symbols: {text[:60]!r}")
    symbols = [m.group(2) for m in matches]
    if len(symbols) != n:
        raise MalformedRecordError(source, line, f"column Elements lists {len(symbols)} symbols, N_atoms is {n}")
    try:
        return np.array([ELEMENTS[sym] for sym in symbols], dtype=np.uint8)
    except KeyError as exc:
        raise MalformedRecordError(source, line, f"column Elements has unknown element {exc.args[0]!r}") from None


def parse_csv_row(fields: dict[str, str], source: str, line: int) -> Molecule:
    """Parse one row of the ``qm9pack`` CSV (already split into named string fields).

    Parameters
    ----------
    fields : dict
        Column name -> raw string, at least :data:`CSV_MOLECULE_COLUMNS` and the values of
        :data:`CSV_COLUMNS`.
    source, line : str, int
        CSV file name and 1-based line, for error messages.

    Raises
    ------
    MalformedRecordError
        Missing or unparsable column, inconsistent atom count, Index not matching XYZ_file.
    """
    try:
        index = int(fields["Index"])
    except (KeyError, ValueError):
        raise MalformedRecordError(source, line, f"column Index {fields.get('Index')!r} is not an integer") from None
    name_id = gdb_id_from_name(fields.get("XYZ_file", ""))
    if name_id != index:
        raise MalformedRecordError(
            source, line, f"column XYZ_file {fields.get('XYZ_file')!r} does not match Index {index}")
    try:
        n = int(fields["N_atoms"])
    except (KeyError, ValueError):
        raise MalformedRecordError(source, line, f"column N_atoms {fields.get('N_atoms')!r} is not an integer") from None
    z = _parse_elements(fields["Elements"], n, source, line)
    pos = _parse_positions(fields["XYZ_Ang"], n, source, line)
    cols = list(CSV_COLUMNS.values())
    targets = dict(zip(CSV_COLUMNS, _floats([fields[c] for c in cols], source, lambda k: (line, f"column {cols[k]}"))))
    smiles = fields.get("SMILES") or None
    return Molecule(index, z, pos, targets, smiles)


def split_csv_line(raw: str, header: list[str], source: str, line: int) -> dict[str, str]:
    """Split one raw CSV data line into ``{column: string}`` using the file's header."""
    try:
        row = next(csv.reader([raw]))
    except (csv.Error, StopIteration):
        raise MalformedRecordError(source, line, "not a CSV row") from None
    if len(row) != len(header):
        raise MalformedRecordError(source, line, f"{len(row)} fields, header has {len(header)}")
    return dict(zip(header, row))
