"""Bad inputs get one clear line naming the key, file or setting (issue 13, "Unclear").

Each test feeds one bad input -- a value of the wrong type, corrupt velocities, a folder given
as a checkpoint, a changed QM9 setting, 2D data -- and checks the one-line error and that
nothing already written was lost.
"""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from invattn.cli import main as cli
from invattn.pipeline.config import ConfigError, config_dir, key_types, load_config

QM9_CSV = "tests/data/qm9/qm9pack_sample_500.csv"


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"invattn {command}: error: ")
    return err[0]


# --- every config key is typed -------------------------------------------------------------

@pytest.mark.parametrize("name, override, pattern", [
    ("simulate", "seed=abc", r"config key seed must be an integer, got 'abc'"),
    ("simulate", "n_train=2.5", r"config key n_train must be an integer, got 2.5"),
    ("simulate", "dt=fast", r"config key dt must be a number, got 'fast'"),
    ("simulate", "box_size=big", r"config key box_size must be a number or null, got 'big'"),
    ("simulate", "overwrite=maybe", r"config key overwrite must be true or false, got 'maybe'"),
    ("simulate", "shard_index=[1]", r"config key shard_index must be an integer or null, got \[1\]"),
    ("train_nbody", "seed=abc", r"config key seed must be an integer, got 'abc'"),
    ("train_nbody", "train.epochs=1.5", r"config key train.epochs must be an integer, got 1.5"),
    ("train_nbody", "optim.lr=abc", r"config key optim.lr must be a number, got 'abc'"),
    ("train_nbody", "model.subdeterminants=some",
     r"config key model.subdeterminants must be an integer or 'all', got 'some'"),
    ("train_nbody", "data.max_train_sims=ten", r"config key data.max_train_sims must be an integer or null"),
    ("train_qm9", "model.heads=x", r"config key model.heads must be an integer, got 'x'"),
    ("preprocess_qm9", "shard_size=big", r"config key shard_size must be an integer, got 'big'"),
    ("preprocess_qm9", "split.test_fraction=a", r"config key split.test_fraction must be a number"),
    ("sweep", "search.lr=abc", r"config key search.lr must be a list of numbers, got 'abc'"),
    ("sweep", "search.seeds=[0,x]", r"config key search.seeds must be a list of integers, got \[0, 'x'\]"),
    ("sweep", "search.subdeterminants=[all,x]",
     r"config key search.subdeterminants must be a list of integers or 'all'"),
    ("sweep", "resources.cpus_per_trial=two", r"config key resources.cpus_per_trial must be a number"),
    ("reproduce_table1", "epochs=ten", r"config key epochs must be an integer, got 'ten'"),
    ("evaluate", "checkpoint=[a]", r"config key checkpoint must be a string or null"),
])
def test_wrong_type_names_the_key(name, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(name, [override])


def test_wrong_type_on_the_command_line_is_one_line(capsys):
    assert cli(["simulate", "seed=abc"]) == 2
    assert "config key seed must be an integer, got 'abc'" in one_error_line(capsys, "simulate")
    assert cli(["sweep", "train.epochs=abc"]) == 2
    assert "config key train.epochs must be an integer" in one_error_line(capsys, "sweep")


def test_help_shows_each_keys_type(capsys):
    assert cli(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "  seed=0  (int)    # " in text
    assert "  model.subdeterminants='all'  (int | 'all')    # " in text
    assert "  train.grad_clip=None  (float | null)    # " in text


def test_right_types_are_normalized():
    cfg = load_config("simulate", ["n_train=1e3", "dt=1", "out=2024", "box_size=null"])
    assert (cfg.n_train, cfg.dt, cfg.out, cfg.box_size) == (1000, 1.0, "2024", None)
    assert isinstance(cfg.n_train, int) and isinstance(cfg.dt, float)
    cfg = load_config("train_nbody", ["model.subdeterminants=4", "optim.lr=1e-3"])
    assert cfg.model.subdeterminants == 4 and cfg.optim.lr == 1e-3


def test_every_key_of_every_config_and_preset_has_a_type():
    for path in sorted(config_dir().glob("*.yaml")):
        untyped = [k for k, t in key_types(path.stem).items() if t is None]
        assert not untyped, f"{path.name}: declare these keys in pipeline.config.KEY_TYPES: {untyped}"
        for preset in sorted((config_dir() / path.stem).glob("*.yaml")):
            load_config(path.stem, [f"preset={preset.stem}"])  # presets pass their own types


# --- corrupt velocities ---------------------------------------------------------------------

@pytest.mark.parametrize("value, word", [(np.inf, "inf"), (np.nan, "nan")])
def test_nonfinite_velocities_are_named_on_reading(nbody_tiny, tmp_path, capsys, value, word):
    from invattn.pipeline.nbody import NBodyWindows

    data = tmp_path / "data"
    shutil.copytree(nbody_tiny, data)
    with h5py.File(data / "train.h5", "r+") as f:
        f["velocities"][17, 4, 2, 1] = value
    pattern = rf"{data / 'train.h5'}: velocities holds {word} at simulation 17, frame 4, body 2"
    with pytest.raises(ValueError, match=pattern):
        NBodyWindows(data / "train.h5")
    assert cli(["train", f"data.dir={data}", f"run_dir={tmp_path / 'run'}", "train.epochs=1"]) == 2
    line = one_error_line(capsys, "train")
    assert "velocities holds" in line and "simulation 17" in line and "train.h5" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- evaluate checkpoint=<a folder> ---------------------------------------------------------

def test_evaluate_a_folder_suggests_the_checkpoint_file(nbody_tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", f"data.dir={nbody_tiny}", f"run_dir={run}", "train.epochs=1",
                "model.n_layers=1", "model.mlp_hidden=16", "train.tensorboard=false",
                "train.progress=false", "data.max_train_sims=32"]) == 0
    capsys.readouterr()
    assert cli(["evaluate", f"checkpoint={run}"]) == 2
    line = one_error_line(capsys, "evaluate")
    assert f"checkpoint {run} is a folder" in line
    assert f"did you mean {run / 'checkpoints' / 'last.pt'}" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["evaluate", f"checkpoint={empty}"]) == 2
    assert "is a folder, not a checkpoint file and holds no .pt file" in one_error_line(capsys, "evaluate")
    assert cli(["evaluate", f"checkpoint={run / 'checkpoints' / 'last.pt'}"]) == 0  # the suggestion works


# --- QM9 rerun with changed settings --------------------------------------------------------

def test_qm9_rerun_names_the_changed_setting(tmp_path, capsys):
    out = tmp_path / "qm9"
    base = ["preprocess-qm9", f"source={QM9_CSV}", f"out={out}", "cluster=serial", "progress=false"]
    assert cli(base) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli([*base, "shard_size=100"]) == 2
    line = one_error_line(capsys, "preprocess-qm9")
    assert "shard_size: 2000 -> 100" in line and "overwrite=true" in line
    assert cli([*base, "split.seed=3", "bonds.valence_repair=false"]) == 2
    line = one_error_line(capsys, "preprocess-qm9")
    assert "bonds.valence_repair: True -> False" in line and "split.seed: 0 -> 3" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# --- 2D data --------------------------------------------------------------------------------

def test_training_on_2d_data_is_refused_up_front(tmp_path, capsys):
    """2D data with a 3D group (model.group=SE3, the default) fail in one line naming the fix.
    (Before issue 12 every 2D run was refused: "2D is not supported by the model yet"; E2/SE2 now
    train on them, tests/test_groups_nbody2d.py.)"""
    data = tmp_path / "nbody_2d"
    assert cli(["simulate", f"out={data}", "dim=2", "n_train=8", "n_test=4", "progress=false"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert cli(["train", f"data.dir={data}", f"run_dir={run}", "train.epochs=1"]) == 2
    line = one_error_line(capsys, "train")
    assert "holds 2D trajectories" in line and "model.group=SE3 acts on 3D vectors" in line
    assert "use model.group=E2 or SE2" in line
    # Refused before the model is built or anything is written (the run lock aside).
    assert not [p.name for p in run.glob("*") if p.name != ".lock"]

    from invattn.sweeps.runner import check_data

    cfg = load_config("train_nbody", [f"data.dir={data}"])
    with pytest.raises(ValueError, match="use model.group=E2 or SE2"):
        check_data(cfg)  # a sweep refuses before starting Ray
