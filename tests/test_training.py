"""N-body training: loss goes down, exact resume, evaluate, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from invattn.cli import main as cli
from invattn.pipeline.config import ConfigError, load_config
from invattn.pipeline.training import train
from invattn.pipeline.training.checkpoint import load_checkpoint
from invattn.pipeline.training.cli import evaluate_checkpoint
from invattn.pipeline.training.metrics_log import MetricsLog


def tiny_cfg(data_dir, run_dir, **extra):
    args = [f"data.dir={data_dir}", f"run_dir={run_dir}", "train.epochs=4", "train.batch_size=16",
            "train.num_threads=1", "train.tensorboard=false", "optim.lr=3e-3",
            "model.group=E3", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config("train_nbody", args)


class Interrupt(Exception):
    pass


def test_loss_decreases(nbody_tiny, tmp_path):
    cfg = tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 8})
    last = train(cfg)
    records = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["train_loss"] < 0.7 * records[0]["train_loss"]
    assert last["test_mse_x"] < last["test_zero_change_mse_x"]
    assert last["params"] > 1000 and last["seconds_per_epoch"] > 0


def test_resume_matches_uninterrupted_run(nbody_tiny, tmp_path):
    full = train(tiny_cfg(nbody_tiny, tmp_path / "full", **{"model.group": "SE3"}))

    def stop_after_two(metrics, _ckpt_dir):
        if metrics["epoch"] == 2:
            raise Interrupt

    cfg = tiny_cfg(nbody_tiny, tmp_path / "cut", **{"model.group": "SE3"})
    with pytest.raises(Interrupt):
        train(cfg, reporter=stop_after_two)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = train(cfg)
    for key in ("train_loss", "test_mse_x", "test_mse_v"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-9, abs=0), key
    epochs = [r["epoch"] for r in MetricsLog.read(tmp_path / "cut" / "metrics.jsonl")]
    assert epochs == [1, 2, 3, 4]


def test_evaluate_reproduces_final_metrics(nbody_tiny, tmp_path, capsys):
    last = train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 2}))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    metrics = evaluate_checkpoint(ckpt, device="cpu")
    assert metrics["test_mse_x"] == pytest.approx(last["test_mse_x"], rel=1e-6)
    out = tmp_path / "eval.json"
    assert cli(["evaluate", f"checkpoint={ckpt}", f"output={out}"]) == 0
    assert json.loads(out.read_text())["epoch"] == 2
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng_torch", "config"} <= set(state)


def test_baselines_are_consistent(nbody_tiny, tmp_path):
    from invattn.pipeline.nbody import NBodyWindows

    data = NBodyWindows(nbody_tiny / "test.h5", delta_frames=5, train=False)
    batch = next(data.batches(0, 10_000, dtype=torch.float64))
    # Constant velocity must be the better baseline on short horizons with weak forces.
    cv = (batch.velocities * data.horizon_time - batch.delta_positions).pow(2).mean()
    assert cv < batch.delta_positions.pow(2).mean()
    # Test start frames are deterministic and evenly spread; training ones change per epoch.
    assert (data.start_frames(0) == data.start_frames(7)).all()
    train_windows = NBodyWindows(nbody_tiny / "train.h5", delta_frames=5, train=True, seed=3)
    assert not (train_windows.start_frames(0) == train_windows.start_frames(1)).all()
    assert (train_windows.start_frames(1) == NBodyWindows(
        nbody_tiny / "train.h5", delta_frames=5, train=True, seed=3).start_frames(1)).all()


def test_unknown_key_names_close_matches():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config("train_nbody", ["optim.lrr=1e-3"])


def test_missing_data_says_how_to_generate(tmp_path, capsys):
    rc = cli(["train", f"data.dir={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'r'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "invattn simulate" in err and "nowhere" in err


def test_resume_refuses_other_model(nbody_tiny, tmp_path):
    train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 1}))
    with pytest.raises(ValueError, match="model.group: E3 -> SE3"):
        train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"model.group": "SE3"}))


def test_resume_refuses_changed_schedule(nbody_tiny, tmp_path):
    # A longer run from a finished cosine schedule would train at lr 0 without this check.
    train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 1}))
    with pytest.raises(ValueError, match=r"train\.epochs: 1 -> 2"):
        train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 2}))
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 1, "optim.lr": 0.1}))
    # The same settings: nothing left to do, the last metrics come back.
    again = train(tiny_cfg(nbody_tiny, tmp_path / "run", **{"train.epochs": 1}))
    assert again["epoch"] == 1 and "test_mse_x" in again


@pytest.mark.parametrize("override, key", [
    ("train.eval_every=0", "train.eval_every"), ("train.epochs=1.5", "train.epochs"),
    ("optim.lr=-1", "optim.lr"), ("train.device=tpu", "tpu"), ("model.vectors=0", "model"),
])
def test_bad_training_settings_are_named(nbody_tiny, tmp_path, capsys, override, key):
    rc = cli(["train", f"data.dir={nbody_tiny}", f"run_dir={tmp_path / 'r'}", "train.tensorboard=false",
              override])
    assert rc == 2
    assert key in capsys.readouterr().err
