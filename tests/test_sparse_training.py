"""End to end at small size: `invattn simulate preset=nbody100` then `invattn train ... model.cutoff=...`.

Real simulations of 100 charged bodies (few and short) and a real training run of the sparse model.
"""
import json

import pytest
import torch

from models import build_model
from models.graph import radius_graph_dense
from pipeline.cli import main as cli
from pipeline.nbody.dataset import NBodyWindows
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.cli import evaluate_checkpoint

TINY_MODEL = ["model.group=E3", "model.n_layers=2", "model.vectors=2", "model.scalars=8", "model.heads=2",
              "model.query_vectors=2", "model.query_scalars=8", "model.mlp_hidden=16"]


def test_train_sparse_model_on_100_body_preset(tmp_path, capsys):
    data = tmp_path / "nbody100"
    assert cli(["simulate", "preset=nbody100", f"out={data}", "n_train=16", "n_test=4", "n_steps=1000",
                "seed=3", "progress=false"]) == 0
    run = tmp_path / "run"
    args = ["train", "task=nbody", "preset=nbody100", f"data.dir={data}", f"run_dir={run}",
            "train.epochs=3", "train.batch_size=4", "train.eval_batch_size=4", "train.num_threads=1",
            "train.tensorboard=false", "train.progress=false", "optim.lr=3e-3", *TINY_MODEL]
    assert cli(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]

    state = load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")
    assert state["config"]["model"]["cutoff"] == 4.0 and state["config"]["model"]["cutoff_inner"] == 3.0
    # the preset's data really is 100 bodies, and the cutoff really makes the graph sparse
    dataset = NBodyWindows(data / "test.h5", train=False)
    assert dataset.n_bodies == 100
    x = next(dataset.batches(0, 4)).positions
    edges, _ = radius_graph_dense(x, torch.ones(x.shape[:2], dtype=torch.bool), 4.0)
    assert 100 * 4 < edges.shape[1] < 0.6 * 4 * 100 * 100
    model_kwargs = {k: v for k, v in state["config"]["model"].items() if v is not None}
    model = build_model("nbody", **model_kwargs)
    model.load_state_dict(state["model"])
    assert model.cutoff == (4.0, 3.0)
    # evaluating the sparse checkpoint reproduces the run's final test metric
    assert evaluate_checkpoint(run / "checkpoints" / "last.pt", device="cpu")["test_mse_x"] == \
        pytest.approx(records[-1]["test_mse_x"], rel=1e-6)

    # resuming with another cutoff is refused by name
    capsys.readouterr()
    assert cli([*args[:-len(TINY_MODEL)], *TINY_MODEL, "model.cutoff=5.0", "train.epochs=4"]) != 0
    assert "model.cutoff: 4.0 -> 5.0" in capsys.readouterr().err
