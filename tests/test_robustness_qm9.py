"""QM9 preprocessing whose every input is malformed (or empty) fails instead of reporting a
"complete" empty dataset (issue 13, item 6)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from invattn.cli import main as cli
from invattn.pipeline.qm9.reader import load_manifest

DATA = Path(__file__).resolve().parent / "data" / "qm9"
ARGS = ["cluster=serial", "progress=false"]


def _real_xyz(n: int) -> dict[str, str]:
    """The first ``n`` real QM9 files of the test archive (name -> text)."""
    out = {}
    with tarfile.open(DATA / "qm9_sample_2000.xyz.tar.bz2") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xyz"):
                out[Path(member.name).name] = tar.extractfile(member).read().decode()
                if len(out) == n:
                    break
    return out


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_every_file_malformed_fails_and_the_dataset_is_not_usable(tmp_path, capsys):
    src = tmp_path / "xyz"
    src.mkdir()
    files = _real_xyz(3)
    for name, text in files.items():     # real molecules, cut off inside the atom block
        (src / name).write_text("".join(text.splitlines(keepends=True)[:4]))
    out = tmp_path / "out"
    assert cli(["preprocess-qm9", f"source={src}", f"out={out}", *ARGS]) == 2
    line = _one_line(capsys)
    first = sorted(files)[0]
    assert line.startswith(f"invattn preprocess-qm9: error: no molecule of QM9 source {src} could be used: "
                           f"found 3, excluded 0, skipped 3; first: {first} line "), line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "empty" and manifest["counts"]["written"] == 0
    with pytest.raises(ValueError, match="status 'empty'"):
        load_manifest(out)


def test_header_only_csv_fails(tmp_path, capsys):
    header = (DATA / "qm9pack_sample_500.csv").read_text().splitlines()[0]
    src = tmp_path / "empty.csv"
    src.write_text(header + "\n")
    assert cli(["preprocess-qm9", f"source={src}", f"out={tmp_path / 'out'}", *ARGS]) == 2
    line = _one_line(capsys)
    assert "no molecule of QM9 source" in line and "found 0" in line, line


def test_one_good_file_among_malformed_ones_is_a_dataset(tmp_path, capsys):
    src = tmp_path / "xyz"
    src.mkdir()
    for i, (name, text) in enumerate(sorted(_real_xyz(3).items())):
        (src / name).write_text(text if i == 1 else "not a molecule\n")
    out = tmp_path / "out"
    assert cli(["preprocess-qm9", f"source={src}", f"out={out}", *ARGS]) == 0
    assert load_manifest(out)["counts"]["written"] == 1
