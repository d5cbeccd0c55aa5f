"""End to end at small size: `invattn simulate preset=nbody100` then `invattn train ... model.cutoff=...`,
and the sparse QM9 model on the real QM9 sample.

Real simulations of 100 charged bodies (few and short), real molecules, real training runs.
"""
import json

import pytest
import torch

from invattn.models import build_model
from invattn.models.graph import radius_graph_dense
from invattn.cli import main as cli
from invattn.pipeline.config import load_config
from invattn.pipeline.nbody.dataset import NBodyWindows
from invattn.pipeline.qm9.dataset import collate_qm9
from invattn.pipeline.training import train
from invattn.pipeline.training.checkpoint import load_checkpoint
from invattn.pipeline.training.cli import evaluate_checkpoint
from invattn.pipeline.training.qm9_task import QM9Task

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


# --- QM9: real molecules through the sparse path --------------------------------------------

QM9_SAMPLE = "tests/data/qm9/qm9_sample_2000.xyz.tar.bz2"
QM9_SMALL = ["model.n_layers=2", "model.vectors=4", "model.scalars=16", "model.heads=4",
             "model.query_vectors=4", "model.query_scalars=16", "model.mlp_hidden=32", "model.readout=32"]


@pytest.fixture(scope="module")
def qm9_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("qm9_sample_sparse")
    assert cli(["preprocess-qm9", f"source={QM9_SAMPLE}", f"out={out}", "cluster=serial",
                "progress=false"]) == 0
    return out


def qm9_cfg(data, run_dir, *extra):
    return load_config("train_qm9", [
        f"data.dir={data}", f"run_dir={run_dir}", "train.epochs=2", "train.batch_size=64",
        "train.num_threads=1", "train.tensorboard=false", "optim.lr=1e-3", "optim.schedule=constant",
        "model.group=SE3", "model.pooling=mean", *QM9_SMALL, *extra])


def test_qm9_sparse_on_real_molecules(qm9_sample, tmp_path):
    """Real QM9 molecules: sparse == dense when the cutoff is beyond every pair; with a 2 A cutoff
    (a sparse graph: QM9 molecules span up to ~10 A) predictions are rotation invariant."""
    task = QM9Task(qm9_cfg(qm9_sample, tmp_path / "unused"))
    batch = collate_qm9([task.train_set[i] for i in range(24)])
    z, x, bonds, mask = batch["atomic_numbers"], batch["positions"].double(), batch["bond_types"], batch["mask"]
    kwargs = dict(group="SE3", n_layers=2, vectors=4, scalars=16, heads=4, query_vectors=4,
                  query_scalars=16, mlp_hidden=32, readout=32, pooling="sum")
    torch.manual_seed(0)
    dense = build_model("qm9", **kwargs).double()
    wide = build_model("qm9", cutoff=100.0, cutoff_inner=50.0, **kwargs).double()
    near = build_model("qm9", cutoff=2.0, cutoff_inner=1.2, **kwargs).double()
    wide.load_state_dict(dense.state_dict())
    near.load_state_dict(dense.state_dict())
    with torch.no_grad():
        assert float((wide(z, x, bonds, mask) - dense(z, x, bonds, mask)).abs().max()) < 1e-10
        y = near(z, x, bonds, mask)
        q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
        rot = q * torch.sign(torch.diagonal(r)) * torch.sign(torch.linalg.det(q))
        assert float((near(z, x @ rot.T + 5.0, bonds, mask) - y).abs().max()) < 1e-10
        assert float((y - dense(z, x, bonds, mask)).abs().max()) > 1e-6  # the cutoff does cut
    edges, _ = radius_graph_dense(x, mask, 2.0)
    assert edges.shape[1] < 0.5 * int((mask.sum(1) ** 2).sum())


def test_qm9_training_with_cutoff(qm9_sample, tmp_path):
    cfg = qm9_cfg(qm9_sample, tmp_path / "run", "model.cutoff=5.0", "train.epochs=1")
    task = QM9Task(cfg)
    torch.manual_seed(0)
    before = task.evaluate(task.build_model().eval(), torch.device("cpu"))["valid_mae"]
    last = train(cfg)
    assert last["valid_mae"] < before
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu")
    assert state["config"]["model"]["cutoff"] == 5.0
