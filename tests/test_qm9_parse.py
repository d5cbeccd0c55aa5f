"""QM9 parsing on real molecules: both source forms, Mathematica notation, malformed records,
split arithmetic, exclusion list, units.  Data: tests/data/qm9 (see PROVENANCE.md)."""
from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from invattn.pipeline.qm9.parse import (TARGET_NAMES, MalformedRecordError, parse_csv_row, parse_number,
                                parse_xyz, split_csv_line)
from invattn.pipeline.qm9.sources import DEFAULT_EXCLUDED_IDS_FILE, load_excluded_ids
from invattn.pipeline.qm9.split import assign_splits, split_sizes
from invattn.pipeline.qm9.units import HARTREE_TO_MEV, PAPER_UNITS, to_paper_units

DATA = Path(__file__).parent / "data" / "qm9"
TAR = DATA / "qm9_sample_2000.xyz.tar.bz2"
CSV = DATA / "qm9pack_sample_500.csv"


@pytest.fixture(scope="module")
def xyz_texts() -> dict[str, str]:
    with tarfile.open(TAR) as tar:
        return {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read().decode() for m in tar if m.isfile()}


@pytest.fixture(scope="module")
def csv_rows() -> list[tuple[int, dict]]:
    with open(CSV, newline="") as f:
        reader = csv.DictReader(f)
        return [(reader.line_num, row) for row in reader]


def test_mathematica_notation():
    assert parse_number("1.2*^-6") == 1.2e-6
    assert parse_number("-8.4813*^-5") == -8.4813e-5
    assert parse_number("1.*^-4") == 1e-4
    assert parse_number("0.") == 0.0 and parse_number("66.") == 66.0
    for bad in ("1.2.3", "abc", "", "nan", "1*^", "inf"):
        with pytest.raises(ValueError):
            parse_number(bad)


def test_notation_in_real_files(xyz_texts):
    # gdb 5480: an N atom at x = 1.7284*^-5; alpha "66."
    m = parse_xyz(xyz_texts["dsgdb9nsd_005480.xyz"], "dsgdb9nsd_005480.xyz")
    assert m.gdb_id == 5480 and m.positions[3, 0] == 1.7284e-5 and m.targets["alpha"] == 66.0
    # gdb 4 (acetylene): coordinates "0." and "1.", A and mu "0."
    m = parse_xyz(xyz_texts["dsgdb9nsd_000004.xyz"], "dsgdb9nsd_000004.xyz")
    assert m.positions[:, 1].tolist() == [0.0] * 4 and m.positions[:, 2].tolist() == [1.0] * 4
    assert m.targets["A"] == 0.0 and m.targets["mu"] == 0.0 and m.atomic_numbers.tolist() == [6, 6, 1, 1]
    # The sample's property lines hold no "*^"; write gdb 1's A and homo in that notation.
    text = xyz_texts["dsgdb9nsd_000001.xyz"]
    assert "\t157.7118\t" in text and "\t-0.3877\t" in text
    alt = text.replace("\t157.7118\t", "\t1.577118*^2\t").replace("\t-0.3877\t", "\t-3.877*^-1\t")
    a, b = parse_xyz(text, "dsgdb9nsd_000001.xyz"), parse_xyz(alt, "dsgdb9nsd_000001.xyz")
    assert b.targets["A"] == pytest.approx(157.7118, rel=1e-15) and b.targets["homo"] == pytest.approx(-0.3877)
    assert np.array_equal(a.positions, b.positions) and a.smiles == "C"


def test_csv_literal_columns_with_zero_dot(csv_rows):
    line, row = next((ln, r) for ln, r in csv_rows if r["Index"] == "4")
    assert "0.," in row["XYZ_Ang"]  # "[[0.5995394918,0.,1.],...]"
    m = parse_csv_row(row, CSV.name, line)
    assert m.positions[:, 1].tolist() == [0.0] * 4 and m.positions[:, 2].tolist() == [1.0] * 4
    # A spaced literal (as Python prints it) gives the same molecule.
    spaced = dict(row, XYZ_Ang=str(m.positions.tolist()).replace("0.0,", "0.,"),
                  Elements=str(["C", "C", "H", "H"]))
    again = parse_csv_row(spaced, CSV.name, line)
    assert np.array_equal(again.positions, m.positions) and np.array_equal(again.atomic_numbers, m.atomic_numbers)


def test_both_forms_give_identical_molecules(xyz_texts, csv_rows):
    assert len(csv_rows) == 500
    for line, row in csv_rows:
        a = parse_csv_row(row, CSV.name, line)
        name = row["XYZ_file"]
        b = parse_xyz(xyz_texts[name], name)
        assert a.gdb_id == b.gdb_id == int(row["Index"])
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers), name
        # The archive writes tiny coordinates with 5 digits ("1.7284*^-5"); the CSV has all 10.
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-9, err_msg=name)
        assert a.targets.keys() == b.targets.keys() == set(TARGET_NAMES)
        for k in TARGET_NAMES:
            assert a.targets[k] == b.targets[k], (name, k)
        assert a.smiles == b.smiles


def _error(text: str, name: str = "dsgdb9nsd_000008.xyz") -> MalformedRecordError:
    with pytest.raises(MalformedRecordError) as info:
        parse_xyz(text, name)
    assert info.value.source == name
    return info.value


def test_malformed_xyz_reports_file_and_line(xyz_texts):
    text = xyz_texts["dsgdb9nsd_000008.xyz"]  # methanol, 6 atoms
    lines = text.splitlines()
    assert _error("\n".join(lines[:5])).line == 6                       # truncated in the atoms
    assert _error("\n".join(lines[:8])).line == 9                       # truncated after the atoms
    assert "atom 7 of 7" in str(_error("\n".join(["7"] + lines[1:]))) # count too large
    e = _error("\n".join(["5"] + lines[1:]))                            # count too small
    assert e.line == 8 and "another atom line" in str(e)
    bad = lines[:4] + [lines[4].replace(lines[4].split()[2], "1.2.3")] + lines[5:]
    e = _error("\n".join(bad))
    assert e.line == 5 and "1.2.3" in str(e) and "dsgdb9nsd_000008.xyz line 5" in str(e)
    assert _error(text.replace("gdb 8\t", "gdb 9\t")).line == 2         # id differs from file name
    assert _error("\n".join([lines[0], lines[1].rsplit("\t", 2)[0]] + lines[2:])).line == 2  # 14 properties
    assert _error("").line == 1


def test_malformed_csv_row(csv_rows):
    line, row = csv_rows[3]
    with pytest.raises(MalformedRecordError, match=rf"{CSV.name} line {line}: column XYZ_Ang"):
        parse_csv_row(dict(row, XYZ_Ang=row["XYZ_Ang"].replace(",", ",x", 1)), CSV.name, line)
    with pytest.raises(MalformedRecordError, match="N_atoms"):
        parse_csv_row(dict(row, N_atoms=str(int(row["N_atoms"]) + 1)), CSV.name, line)
    with pytest.raises(MalformedRecordError, match="HOMO_au"):
        parse_csv_row(dict(row, HOMO_au="-0.2.5"), CSV.name, line)
    with pytest.raises(MalformedRecordError, match="unknown element 'Cl'"):
        parse_csv_row(dict(row, Elements=row["Elements"].replace("'C'", "'Cl'", 1)), CSV.name, line)
    with pytest.raises(MalformedRecordError, match="Elements is not a list"):
        parse_csv_row(dict(row, Elements="__import__('os')"), CSV.name, line)
    with pytest.raises(MalformedRecordError, match="does not match Index"):
        parse_csv_row(dict(row, Index="77"), CSV.name, line)
    header = list(row.keys())
    with pytest.raises(MalformedRecordError, match="fields, header has"):
        split_csv_line('"a",1,2', header, CSV.name, 9)


def test_split_sizes():
    assert split_sizes(130_831) == {"train": 100_000, "valid": 17_748, "test": 13_083}
    small = split_sizes(2000)
    assert small == {"train": 1528, "valid": 272, "test": 200} and sum(small.values()) == 2000
    for n in (0, 1, 7, 499, 1000, 65_432):
        s = split_sizes(n)
        assert sum(s.values()) == n and s["test"] == int(0.1 * n)
        assert abs(s["train"] - n * 100_000 / 130_831) < 1


def test_assign_splits_is_a_seeded_permutation_of_sorted_ids():
    ids = np.random.default_rng(3).choice(133_885, size=3000, replace=False) + 1
    codes = assign_splits(ids, seed=0)
    assert np.bincount(codes, minlength=3).tolist() == [2293, 407, 300]
    # Independent of input order: the permutation is over the sorted ids.
    perm = np.random.default_rng(4).permutation(len(ids))
    assert np.array_equal(assign_splits(ids[perm], seed=0), codes[perm])
    assert not np.array_equal(assign_splits(ids, seed=1), codes)
    with pytest.raises(ValueError, match="duplicate"):
        assign_splits([1, 2, 2], seed=0)


def test_uncharacterized_list():
    ids = load_excluded_ids(None)
    assert len(ids) == 3054 and 58 in ids and 57 not in ids
    assert all(1 <= i <= 133_885 for i in ids)
    # The shipped copy is the repository's data file.
    assert DEFAULT_EXCLUDED_IDS_FILE.read_text() == (DATA / "uncharacterized_ids.txt").read_text()


def test_units():
    assert PAPER_UNITS["gap"] == PAPER_UNITS["homo"] == "meV" and PAPER_UNITS["mu"] == "D"
    assert PAPER_UNITS["alpha"] == "bohr^3" and PAPER_UNITS["Cv"] == "cal/(mol K)"
    assert PAPER_UNITS["U0"] == "Hartree" and PAPER_UNITS["A"] == "GHz"
    assert to_paper_units("homo", -0.3877) == pytest.approx(-0.3877 * 27211.386)
    assert HARTREE_TO_MEV == pytest.approx(27_211.386)
    t = torch.tensor([0.5048, 0.1], dtype=torch.float64)
    assert torch.allclose(to_paper_units("gap", t), t * 27_211.386)
    a = np.array([13.21, 9.46])
    assert to_paper_units("alpha", a) is a and to_paper_units("Cv", 6.469) == 6.469
    with pytest.raises(KeyError, match="unknown QM9 target"):
        to_paper_units("energy", 1.0)
