"""QM9Dataset / collate_qm9 / target_statistics over real preprocessed shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from invattn.pipeline.config import load_config
from invattn.pipeline.qm9 import read_processed
from invattn.pipeline.qm9.dataset import QM9Dataset, collate_qm9, target_statistics
from invattn.pipeline.qm9.stage import preprocess

CSV = Path(__file__).parent / "data" / "qm9" / "qm9pack_sample_500.csv"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("qm9_ds")
    preprocess(load_config("preprocess_qm9", [f"source={CSV}", f"out={out}", "cluster=serial",
                                              "shard_size=150", "progress=false"]), log=lambda *_: None)
    return out


def test_splits_partition_the_data(out):
    sets = {s: QM9Dataset(out, s, "homo") for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in sets.items()} == {"train": 382, "valid": 68, "test": 50}
    ids = torch.cat([d.gdb_ids for d in sets.values()])
    assert len(set(ids.tolist())) == 500
    by_id = {d["gdb_id"]: d for d in read_processed(out)}
    for split, ds in sets.items():
        for k in (0, len(ds) // 2, len(ds) - 1):
            item, ref = ds[k], by_id[int(ds[k]["gdb_id"])]
            assert ref["split"] == split
            assert item["target"].item() == ref["targets"]["homo"] and item["target"].dtype == torch.float64
            assert torch.equal(item["atomic_numbers"], torch.from_numpy(ref["atomic_numbers"].astype(np.int64)))
            assert torch.equal(item["positions"], torch.from_numpy(ref["positions"]))
            assert torch.equal(item["bond_types"], torch.from_numpy(ref["bonds"]["types"].astype(np.int64)))
    with pytest.raises(IndexError):
        sets["test"][50]


def test_collate_pads_and_builds_bond_matrix(out):
    ds = QM9Dataset(out, "train", "gap")
    items = [ds[k] for k in range(9)]
    batch = collate_qm9(items)
    n = torch.tensor([len(i["atomic_numbers"]) for i in items])
    B, N = 9, int(n.max())
    assert n.min() < N  # the batch really needs padding
    assert batch["atomic_numbers"].shape == (B, N) and batch["atomic_numbers"].dtype == torch.long
    assert batch["positions"].shape == (B, N, 3)
    assert batch["bond_types"].shape == (B, N, N) and batch["bond_types"].dtype == torch.long
    assert batch["mask"].shape == (B, N) and batch["mask"].dtype == torch.bool
    assert batch["target"].shape == (B,) and batch["target"].dtype == torch.float64
    assert torch.equal(batch["mask"].sum(1), n) and torch.equal(batch["n_atoms"], n)
    assert torch.equal(batch["bond_types"], batch["bond_types"].transpose(1, 2))
    assert not batch["bond_types"].diagonal(dim1=1, dim2=2).any()
    pad = ~batch["mask"]
    assert not batch["atomic_numbers"][pad].any() and not batch["positions"][pad].any()
    assert not batch["bond_types"][pad].any() and not batch["bond_types"].transpose(1, 2)[pad].any()
    for k, item in enumerate(items):
        i, j = item["bond_pairs"].T
        assert torch.equal(batch["bond_types"][k, i, j], item["bond_types"])
        assert int((batch["bond_types"][k] > 0).sum()) == 2 * len(item["bond_types"])
        assert torch.equal(batch["positions"][k, : n[k]], item["positions"])
        assert batch["target"][k] == item["target"]
    # Through a DataLoader, as the training loop uses it.
    loaded = next(iter(DataLoader(ds, batch_size=32, shuffle=False, collate_fn=collate_qm9)))
    assert loaded["bond_types"].shape[0] == 32 and loaded["mask"].any(1).all()


def test_target_statistics_from_training_split_only(out):
    train = QM9Dataset(out, "train", "U0")
    mean, std = target_statistics(train)
    y = np.array([d["targets"]["U0"] for d in read_processed(out) if d["split"] == "train"])
    assert mean == pytest.approx(y.mean(), rel=1e-12) and std == pytest.approx(y.std(), rel=1e-12)
    with pytest.raises(ValueError, match="training split"):
        target_statistics(QM9Dataset(out, "valid", "U0"))


def test_bad_arguments(out, tmp_path):
    with pytest.raises(ValueError, match="unknown QM9 target"):
        QM9Dataset(out, "train", "energy")
    with pytest.raises(ValueError, match="split must be one of"):
        QM9Dataset(out, "validation", "homo")
    with pytest.raises(FileNotFoundError, match="preprocess-qm9"):
        QM9Dataset(tmp_path, "train", "homo")
    with pytest.raises(ValueError, match="at least one"):
        collate_qm9([])


def test_both_readers_decode_the_shards_through_one_decoder(out):
    from invattn.pipeline.qm9.reader import Molecules, read_molecules

    every, one_by_one = read_molecules(out), list(read_processed(out))  # 4 shards of <= 150
    assert len(every) == len(one_by_one) == 500 and every.atom_offsets[-1] == len(every.positions)
    for k in (0, 149, 150, 499):  # both sides of a shard boundary
        got, want = every.molecule(k), one_by_one[k]
        assert got["gdb_id"] == want["gdb_id"] and got["targets"] == want["targets"]
        assert np.array_equal(got["positions"], want["positions"])
        assert np.array_equal(got["bonds"]["pairs"], want["bonds"]["pairs"])
    valid, ds = read_molecules(out, "valid"), QM9Dataset(out, "valid", "gap")
    assert len(valid) == len(ds) == 68 and (valid.split == 1).all()
    assert valid.molecule(7)["gdb_id"] == int(ds[7]["gdb_id"])
    assert torch.equal(ds[7]["positions"], torch.from_numpy(valid.molecule(7)["positions"]))
    assert len(Molecules.concatenate([])) == 0 and len(every.select(every.split == 9)) == 0
