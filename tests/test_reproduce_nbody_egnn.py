"""`invattn reproduce-nbody-egnn` (issue 15): the EGNN paper's N-body protocol end to end at tiny
size on a local Ray instance, in a temporary folder: docs/ untouched by a trial run, the JSON
keeps every run with its curve, the plot is redrawn from the JSON alone, publish is explicit."""
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
    return subprocess.run([sys.executable, "-m", "invattn.cli", "reproduce-nbody-egnn", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def test_egnn_protocol_trial_then_publish(nbody_tiny, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    before = {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    # nbody_tiny: 96 training simulations (80 train + 16 validation), 49 frames (30 -> 40 fits).
    tiny = [f"data_dir={nbody_tiny}", "lr_grid=[1e-3,3e-3]", "lr_epochs=1", "epochs=2", "seeds=[0]",
            "val_sims=16", "final_val_sims=16", "cpus_per_trial=1"]
    proc = _reproduce(tmp_path, *tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()} == before, "docs/ changed"
    own = tmp_path / "results" / "egnn_protocol"
    record = json.loads((own / "nbody_egnn_protocol.json").read_text())
    for group in ("E3", "SE3", "EGNN"):
        r = record[group]
        assert r["epochs"] == 2 and r["seeds"] == [0] and r["best_val_epoch_per_seed"][0] in (1, 2)
        assert r["mse_x_best_val"] > 0 and r["lr"] in (1e-3, 3e-3)
    assert record["EGNN"]["params"] == 133764  # the paper's EGNN size on this benchmark
    # Every run of both steps, with its curve; step 1 ranked by validation, 2 rates x 3 models.
    assert len(record["lr_runs"]) == 6 and len(record["runs"]) == 3
    assert all([c["epoch"] for c in r["curve"]] == [1, 2] for r in record["runs"])
    lr_of = {}
    for r in record["lr_runs"]:
        best = lr_of.get(r["group"])
        if best is None or r["curve"][-1]["val_mse_x"] < best[0]:
            lr_of[r["group"]] = (r["curve"][-1]["val_mse_x"], r["lr"])
    assert {g: lr for g, (_, lr) in lr_of.items()} == {g: record[g]["lr"] for g in ("E3", "SE3", "EGNN")}
    # The protocol as run: frame 30 -> 40, positions only, validation held out of training.
    train_yaml = (tmp_path / "results" / "egnn_protocol_final" / "train.yaml").read_text()
    for line in ("start_frame: 30", "delta_frames: 10", "val_sims: 16", "velocity_loss_weight: 0.0"):
        assert line in train_yaml, line
    table = (own / "egnn_protocol.md").read_text()
    assert "| EGNN (Satorras et al. 2021) (published) | 0.0071 |" in table and "this repo, EGNN" in table
    assert (own / "nbody_egnn_protocol_curves.png").stat().st_size > 0

    # Publishing is an explicit second step; it rewrites only the marked table and the JSON/plot.
    proc = _reproduce(tmp_path, *tiny, "publish_only=true", "publish=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = json.loads((docs / "results" / "nbody_egnn_protocol.json").read_text())
    assert published["EGNN"]["mse_x"] == record["EGNN"]["mse_x"]
    text = (docs / "results.md").read_text()
    assert "this repo, EGNN" in text and "(not run yet)\n<!-- nbody_egnn:end -->" not in text
    assert "<!-- table1:begin" in text and (docs / "results" / "nbody_table1.json").read_bytes() == \
        before[docs / "results" / "nbody_table1.json"]
