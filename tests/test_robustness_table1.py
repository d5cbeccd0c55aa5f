"""A trial `invattn reproduce-table1` writes to its own folder; only publish=true touches the
tracked docs/ files (issue 13, item 1).  One real, tiny reproduction on a local Ray instance."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _reproduce(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(cwd / "home")
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "invattn.cli", "reproduce-table1", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def test_trial_reproduction_leaves_docs_alone_and_publish_is_explicit(nbody_tiny, tmp_path):
    # The relative defaults (results/, docs/...) resolve inside tmp_path, as in a checkout.
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    before = {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    proc = _reproduce(tmp_path, f"data_dir={nbody_tiny}", "lr_grid=[1e-3]", "lr_epochs=1", "epochs=1",
                      "seeds=[0]", "cpus_per_trial=1", "val_sims=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()} == before, "docs/ changed"
    own = tmp_path / "results" / "table1"
    record = json.loads((own / "nbody_table1.json").read_text())
    assert record["E3"]["epochs"] == 1 and record["SE3"]["seeds"] == [0]
    assert (own / "nbody_table1_curves.png").stat().st_size > 0
    assert "this repo, E(3)" in (own / "table1.md").read_text()
    assert "docs/ is unchanged; publish these numbers with" in proc.stdout
    # Issue 15: the EGNN row, rates chosen on the validation split, every run kept in the JSON.
    assert record["EGNN"]["seeds"] == [0] and "this repo, EGNN" in (own / "table1.md").read_text()
    assert sorted(r["group"] for r in record["lr_runs"]) == ["E3", "EGNN", "SE3"]
    assert all("val_mse_x" in r["curve"][-1] for r in record["lr_runs"])
    assert all("val_mse_x" not in r["curve"][-1] for r in record["runs"])  # final: all 96 training sims
    assert "validation" in record["protocol"]["lr_chosen_on"]

    # The explicit step: the same settings with publish=true, reporting on the finished runs.
    proc = _reproduce(tmp_path, f"data_dir={nbody_tiny}", "epochs=1", "seeds=[0]", "publish_only=true",
                      "publish=true", "val_sims=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = json.loads((docs / "results" / "nbody_table1.json").read_text())
    assert published["E3"]["mse_x"] == record["E3"]["mse_x"]
    text = (docs / "results.md").read_text()
    assert "## Protocol as run" in text, "the prose around the generated table is kept"
    assert text != before[docs / "results.md"].decode()


def test_publish_must_be_a_boolean(tmp_path):
    proc = _reproduce(tmp_path, "publish=maybe", "publish_only=true")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "publish" in line and "maybe" in line, line
