"""2D N-body end to end (issue 12): `invattn simulate dim=2` data train with model.group=E2/SE2
through `invattn train` and `invattn sweep`, and beat the constant-velocity baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from invattn.cli import GROUPS_HELP
from invattn.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
FAST = ["train.num_threads=1", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def nbody_2d(tmp_path_factory):
    """A small real 2D dataset with the NRI charged-particle settings (preset=nri2d)."""
    out = tmp_path_factory.mktemp("nbody_2d")
    assert cli(["simulate", "preset=nri2d", f"out={out}", "n_train=200", "n_test=50", "seed=3",
                "progress=false"]) == 0
    return out


@pytest.mark.parametrize("group", ["E2", "SE2"])
def test_2d_training_beats_constant_velocity(nbody_2d, tmp_path, capsys, group):
    """20 short epochs (a few seconds) on 200 simulations: test mse_x well below x + v t."""
    run = tmp_path / group
    rc = cli(["train", f"data.dir={nbody_2d}", f"run_dir={run}", f"model.group={group}", "train.epochs=20",
              "train.batch_size=32", "optim.lr=3e-3", "train.eval_every=20", *FAST])
    assert rc == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.rindex("{"):])
    assert metrics["test_mse_x"] < 0.7 * metrics["test_constant_velocity_mse_x"], metrics
    assert metrics["test_mse_v"] < 0.8 * metrics["test_zero_change_mse_v"], metrics
    assert f"group={group}" in out


def test_2d_egnn_baseline_trains_too(nbody_2d, tmp_path):
    assert cli(["train", f"data.dir={nbody_2d}", f"run_dir={tmp_path / 'egnn'}", "architecture=egnn",
                "train.epochs=1", "egnn.hidden=16", *FAST]) == 0


def test_help_lists_the_groups(capsys):
    from invattn.models.groups import GROUP_NAMES

    assert cli(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in GROUPS_HELP for name in GROUP_NAMES) and GROUPS_HELP in text
    assert cli(["train", "--help"]) == 0
    assert "2D data (preset=nri2d): SE2 or E2" in capsys.readouterr().out


@pytest.mark.slow
def test_2d_sweep_over_e2_and_se2(nbody_2d, tmp_path):
    """A real local Ray sweep over model.group=[E2, SE2] on 2D data (one epoch per trial)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "invattn.cli", "sweep", "name=g2d", f"results_dir={tmp_path / 'results'}",
         f"data.dir={nbody_2d}", "ray.num_cpus=2", "ray.dashboard=false", "train.epochs=1",
         "train.batch_size=32", "train.num_threads=1", "verbose=0", "search.groups=[E2,SE2]", "search.lr=[1e-3]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "E2" in proc.stdout and "SE2" in proc.stdout, proc.stdout[-2000:]


def test_sweep_refuses_a_3d_group_on_2d_data_before_ray(nbody_2d, tmp_path, capsys):
    rc = cli(["sweep", "name=bad", f"results_dir={tmp_path}", f"data.dir={nbody_2d}", "search.groups=[E2,SE3]",
              "search.lr=[1e-3]"])
    assert rc == 2
    assert "model.group=SE3 acts on 3D vectors: use model.group=E2 or SE2" in capsys.readouterr().err
    rc = cli(["sweep", "name=bad", f"results_dir={tmp_path}", f"data.dir={nbody_2d}", "search.groups=[E2,SO3]",
              "search.lr=[1e-3]"])
    assert rc == 2
    assert "search.groups entries must be E3, SE3 (E2, SE2 for 2D data" in capsys.readouterr().err


def test_2d_rotation_augmentation_and_evaluate(nbody_2d, tmp_path, capsys):
    """data.augment_rotations draws 2D rotations; `invattn evaluate` rebuilds the SE2 model from its
    checkpoint and reproduces the training run's test metrics."""
    run = tmp_path / "aug"
    assert cli(["train", f"data.dir={nbody_2d}", f"run_dir={run}", "model.group=SE2", "train.epochs=1",
                "data.augment_rotations=true", *FAST]) == 0
    out = capsys.readouterr().out
    trained = json.loads(out[out.rindex("{"):])
    assert cli(["evaluate", f"checkpoint={run / 'checkpoints' / 'last.pt'}"]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.rindex("{"):])
    assert evaluated["test_mse_x"] == pytest.approx(trained["test_mse_x"], rel=1e-6)
