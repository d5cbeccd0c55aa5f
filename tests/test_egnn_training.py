"""The EGNN baseline through the same pipeline as ours (issue 15): `invattn train architecture=egnn`,
checkpoints that evaluate and resume, sweeps over E3/SE3/EGNN; the validation split held out of
the training simulations; the EGNN-protocol fixed start frame and positions-only loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from invattn.cli import main as cli
from invattn.pipeline.config import load_config
from invattn.pipeline.training import train
from invattn.pipeline.training.checkpoint import load_checkpoint
from invattn.pipeline.training.cli import evaluate_checkpoint
from invattn.pipeline.training.metrics_log import MetricsLog
from invattn.pipeline.training.nbody_task import NBodyTask, model_label
from invattn.sweeps.space import apply_trial_params, check_space_against_model, param_space


def tiny_cfg(data_dir, run_dir, *extra):
    return load_config("train_nbody", [
        f"data.dir={data_dir}", f"run_dir={run_dir}", "train.epochs=2", "train.batch_size=16",
        "train.num_threads=1", "train.tensorboard=false", "optim.lr=1e-3", "architecture=egnn",
        "egnn.hidden=16", "egnn.n_layers=2", *extra])


def test_egnn_trains_evaluates_and_resumes_through_invattn_train(nbody_tiny, tmp_path, capsys):
    run = tmp_path / "egnn"
    rc = cli(["train", f"data.dir={nbody_tiny}", f"run_dir={run}", "train.epochs=3",
              "train.batch_size=16", "train.num_threads=1", "train.tensorboard=false",
              "architecture=egnn", "egnn.hidden=16", "egnn.n_layers=2", "optim.lr=3e-3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "EGNN params=" in out and "group=" not in out.splitlines()[0]
    records = MetricsLog.read(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["test_mse_x"] < records[-1]["test_zero_change_mse_x"]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["config"]["architecture"] == "egnn" and state["config"]["egnn"]["hidden"] == 16
    assert any(k.startswith("layers.1.velocity") for k in state["model"])  # the EGNN's weights
    from invattn.models import EGNN

    assert records[-1]["params"] == sum(p.numel() for p in EGNN(n_layers=2, hidden=16).parameters())
    # Round trip: the checkpoint alone rebuilds the EGNN and gives the run's final metrics.
    metrics = evaluate_checkpoint(run / "checkpoints" / "last.pt", device="cpu")
    assert metrics["test_mse_x"] == pytest.approx(records[-1]["test_mse_x"], rel=1e-6)
    # Resuming the EGNN run as another model is refused, naming the key.
    with pytest.raises(ValueError, match="architecture: egnn -> attention"):
        train(tiny_cfg(nbody_tiny, run, "architecture=attention", "train.epochs=3",
                       "optim.lr=3e-3"))


def test_checkpoint_without_the_new_keys_still_resumes(nbody_tiny, tmp_path):
    """Checkpoints saved before architecture / egnn / val_sims / velocity_loss_weight existed."""
    cfg = load_config("train_nbody", [f"data.dir={nbody_tiny}", f"run_dir={tmp_path}", "train.epochs=1",
                                      "train.batch_size=32", "train.num_threads=1", "train.tensorboard=false",
                                      "model.group=E3", "model.n_layers=1"])
    train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    del state["config"]["architecture"], state["config"]["egnn"]
    for section, key in (("data", "val_sims"), ("data", "start_frame"), ("train", "velocity_loss_weight")):
        del state["config"][section][key]
    torch.save(state, ckpt)
    assert train(cfg)["epoch"] == 1  # the same run: accepted (nothing left to train)
    cfg.architecture = "egnn"
    with pytest.raises(ValueError, match="architecture: attention -> egnn"):
        train(cfg)


def test_validation_split_is_disjoint_from_training_and_test(nbody_tiny, tmp_path):
    cfg = tiny_cfg(nbody_tiny, tmp_path, "data.val_sims=20")
    task = NBodyTask(cfg)
    assert (task.train_set.n_sims, task.val_set.n_sims, task.test_set.n_sims) == (76, 20, 32)
    assert task.val_set.first_sim == 76 and not task.val_set.train

    def sims(windows):  # the initial state identifies a simulation
        return {windows.positions[i, 0].tobytes() for i in range(windows.n_sims)}

    train_s, val_s, test_s = sims(task.train_set), sims(task.val_set), sims(task.test_set)
    assert len(train_s) == 76 and len(val_s) == 20 and len(test_s) == 32
    assert not train_s & val_s and not val_s & test_s and not train_s & test_s
    assert sum(len(b.charges) for b in task.train_set.batches(0, 16)) == 76  # an epoch: 76 windows
    # max_train_sims cuts the training part, never into the validation simulations.
    task = NBodyTask(tiny_cfg(nbody_tiny, tmp_path, "data.val_sims=20", "data.max_train_sims=10"))
    assert task.train_set.n_sims == 10 and not sims(task.train_set) & sims(task.val_set)
    with pytest.raises(ValueError, match="val_sims=500"):
        NBodyTask(tiny_cfg(nbody_tiny, tmp_path, "data.val_sims=500"))


def test_training_reports_validation_metrics(nbody_tiny, tmp_path):
    last = train(tiny_cfg(nbody_tiny, tmp_path, "data.val_sims=16", "train.epochs=1"))
    assert {"val_mse_x", "val_mse_v", "test_mse_x", "val_zero_change_mse_x"} <= set(last)
    assert last["val_mse_x"] != last["test_mse_x"]


def test_fixed_start_frame_and_positions_only_loss(nbody_tiny, tmp_path):
    cfg = tiny_cfg(nbody_tiny, tmp_path, "data.start_frame=3", "data.delta_frames=2",
                   "train.velocity_loss_weight=0")
    task = NBodyTask(cfg)
    assert (task.train_set.start_frames(5) == 3).all() and (task.test_set.start_frames(0) == 3).all()
    batch = next(task.test_set.batches(0, 8, dtype=torch.float64))
    pos = task.test_set.positions
    np.testing.assert_allclose(batch.delta_positions.numpy(), pos[:8, 5] - pos[:8, 3])
    model = task.build_model().double()
    dx, dv = model(batch.positions, batch.velocities, batch.charges)
    assert task.loss(model, batch).item() == pytest.approx((dx - batch.delta_positions).pow(2).mean().item())
    n_frames = pos.shape[1]
    with pytest.raises(ValueError, match="start_frame"):
        NBodyTask(tiny_cfg(nbody_tiny, tmp_path, f"data.start_frame={n_frames - 1}"))


def test_sweep_space_takes_egnn_as_a_group(nbody_tiny, tmp_path):
    from omegaconf import OmegaConf

    search = OmegaConf.create({"groups": ["E3", "EGNN"], "lr_by_group": {"E3": 1e-3, "EGNN": 5e-4},
                               "subdeterminants": ["all"], "seeds": [0]})
    space = param_space(search)
    base = tiny_cfg(nbody_tiny, tmp_path, "architecture=attention")
    check_space_against_model(base, space)  # builds both models
    egnn = apply_trial_params(base, {"group": "EGNN", "lr_by_group": space["lr_by_group"],
                                     "subdeterminants": "all"})
    ours = apply_trial_params(base, {"group": "E3", "lr_by_group": space["lr_by_group"],
                                     "subdeterminants": "all"})
    assert (egnn.architecture, egnn.optim.lr, model_label(egnn)) == ("egnn", 5e-4, "EGNN")
    assert (ours.architecture, ours.optim.lr, model_label(ours)) == ("attention", 1e-3, "E3")
    with pytest.raises(ValueError, match="E3, SE3 or EGNN"):
        param_space(OmegaConf.create({**OmegaConf.to_container(search), "groups": ["GNN"]}))


def test_evaluate_command_on_an_egnn_checkpoint(nbody_tiny, tmp_path, capsys):
    train(tiny_cfg(nbody_tiny, tmp_path / "run", "train.epochs=1"))
    out = tmp_path / "metrics.json"
    assert cli(["evaluate", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}",
                f"output={out}", "device=cpu"]) == 0
    assert json.loads(out.read_text())["epoch"] == 1


def test_bad_egnn_setting_names_its_section(nbody_tiny, tmp_path, capsys):
    rc = cli(["train", f"data.dir={nbody_tiny}", f"run_dir={tmp_path}", "architecture=egnn", "egnn.hidden=0"])
    assert rc == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid egnn.* setting" in line and "hidden" in line, line
    assert cli(["train", f"data.dir={nbody_tiny}", f"run_dir={tmp_path}", "architecture=gnn"]) == 2
    assert "architecture='gnn' is not one of attention, egnn" in capsys.readouterr().err
