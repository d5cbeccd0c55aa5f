"""Datasets on disk: layout, seeds, shards, merge, resume, overwrite refusal, CLI end to end."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

import invattn.simulator.generate as gen
from invattn.cli import main as cli
from invattn.pipeline.config import config_dir, load_config
from invattn.simulator import initial_conditions, simulate
from invattn.simulator.generate import SimulationSettings, generate, merge, shard_name
from invattn.simulator.io import DATASETS, open_trajectories, read_trajectories

REPO = Path(__file__).resolve().parent.parent
# Tiny but real: 3 frames per simulation; sizes not multiples of the shard count or the block.
TINY = ["n_train=23", "n_test=10", "n_steps=400", "sample_freq=100", "block_size=7", "seed=5"]


def _settings(out, *extra):
    return SimulationSettings.from_config(load_config("simulate", [f"out={out}", *TINY, *extra]))


def _quiet(_message):
    pass


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The tiny dataset written in one process, one file per split."""
    out = tmp_path_factory.mktemp("single")
    generate(_settings(out), log=_quiet)
    return out


def test_layout_and_attributes(single):
    with open_trajectories(single / "train.h5") as f:
        shapes = {name: f[name].shape for name in DATASETS}
        chunks = {name: f[name].chunks for name in DATASETS}
        fill = f["positions"].fillvalue
        attrs = dict(f.attrs)
    assert shapes == {"positions": (23, 3, 5, 3), "velocities": (23, 3, 5, 3), "charges": (23, 5),
                      "energy": (23, 3), "kinetic_energy": (23, 3), "potential_energy": (23, 3)}
    assert chunks["positions"] == (1, 3, 5, 3) and chunks["charges"] == (1, 5) and chunks["energy"] == (1, 3)
    assert np.isnan(fill)
    for key, want in dict(dt=1e-3, sample_freq=100, n_steps=400, box_size=5.0, seed=5, format_version=1,
                          n_bodies=5, dim=3, split="train", n_frames=3, complete=True).items():
        assert attrs[key] == want, key
    cfg = OmegaConf.create(attrs["config"])
    assert cfg.n_train == 23 and cfg.seed == 5 and cfg.out == str(single)
    test = read_trajectories(single / "test.h5")
    assert test["positions"].shape == (10, 3, 5, 3) and test["attrs"]["split"] == "test"
    assert not list(single.glob(".*tmp*")), "no temporary files left behind"


def test_contents_match_simulate_on_seeded_initial_conditions(single):
    data = read_trajectories(single / "train.h5")
    x, v, q = initial_conditions(5, "train", 0, 23, n_bodies=5, dim=3)
    pos, vel, ke, pe = simulate(x, v, q, n_steps=400, sample_freq=100, return_energy=True)
    np.testing.assert_array_equal(data["positions"], pos)
    np.testing.assert_array_equal(data["velocities"], vel)
    np.testing.assert_array_equal(data["charges"], q)
    np.testing.assert_array_equal(data["kinetic_energy"], ke)
    np.testing.assert_array_equal(data["potential_energy"], pe)
    np.testing.assert_array_equal(data["energy"], ke + pe)


def test_initial_condition_distribution():
    x, v, q = initial_conditions(1, "train", 0, 2000, n_bodies=5, dim=3, loc_std=2.0, vel_norm=0.7)
    assert set(np.unique(q)) == {-1.0, 1.0}
    assert abs((q > 0).mean() - 0.5) < 0.02
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 0.7, rtol=1e-12)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 2.0) < 0.05
    # Directions are uniform: the mean unit vector is ~0 and each axis carries a third.
    u = v / 0.7
    assert np.abs(u.mean(axis=(0, 1))).max() < 0.03
    np.testing.assert_allclose((u ** 2).mean(axis=(0, 1)), 1 / 3, atol=0.02)


def test_seeds_reproducible_and_distinct():
    a = initial_conditions(9, "train", 100, 110, 5, 3)
    b = initial_conditions(9, "train", 105, 110, 5, 3)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left[5:], right)   # simulation k does not depend on the range
    other_seed = initial_conditions(10, "train", 100, 110, 5, 3)
    other_split = initial_conditions(9, "test", 100, 110, 5, 3)
    assert not np.allclose(a[0], other_seed[0]) and not np.allclose(a[0], other_split[0])


def test_same_arrays_with_one_numba_thread_in_another_process(single, tmp_path):
    code = textwrap.dedent(f"""
        import numba
        from invattn.cli import main
        assert numba.get_num_threads() == 1
        raise SystemExit(main(["simulate", "out={tmp_path}", *{TINY!r}, "progress=false"]))
    """)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=300)
    for split in ("train", "test"):
        one, many = read_trajectories(tmp_path / f"{split}.h5"), read_trajectories(single / f"{split}.h5")
        for name in DATASETS:
            np.testing.assert_array_equal(one[name], many[name])


def _assert_same_data(left: Path, right: Path):
    a, b = read_trajectories(left), read_trajectories(right)
    for name in DATASETS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for key in ("dt", "sample_freq", "n_steps", "box_size", "seed", "split", "n_bodies", "dim",
                "n_frames", "n_sims", "format_version"):
        assert a["attrs"][key] == b["attrs"][key], key


def test_shards_then_merge_equal_one_run(single, tmp_path):
    for i in (2, 0, 1):  # independent tasks, any order, any thread count
        threads = "num_threads=1" if i == 0 else "num_threads=null"
        generate(_settings(tmp_path, "n_shards=3", f"shard_index={i}", threads), log=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        shard_name(s, i, 3) for s in ("train", "test") for i in range(3))
    with h5py.File(tmp_path / shard_name("train", 1, 3)) as f:
        assert (f.attrs["sim_start"], f.attrs["sim_stop"], f["positions"].shape[0]) == (7, 15, 8)
    merge(tmp_path, 3, log=_quiet)
    with h5py.File(tmp_path / "train.h5") as f:
        assert f["positions"].is_virtual and f.attrs["virtual"]
        assert OmegaConf.create(f.attrs["config"]).shard_index is None
    for split in ("train", "test"):
        _assert_same_data(tmp_path / f"{split}.h5", single / f"{split}.h5")
    # The merged folder can be moved as a whole: sources are stored relative to it.
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    _assert_same_data(moved / "train.h5", single / "train.h5")


def test_missing_or_incomplete_shard_is_detected_when_opening_merged_file(tmp_path):
    generate(_settings(tmp_path, "n_shards=3", "n_test=0"), log=_quiet)
    merge(tmp_path, 3, log=_quiet)
    shard = tmp_path / shard_name("train", 1, 3)
    with h5py.File(shard, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(ValueError, match=rf"source shard .*{shard.name} is not usable: no complete=True"):
        open_trajectories(tmp_path / "train.h5")
    shard.unlink()
    # The pitfall being guarded against: plain h5py silently reads the NaN fill value.
    with h5py.File(tmp_path / "train.h5") as f:
        assert np.isnan(f["positions"][7:15]).all() and np.isfinite(f["positions"][:7]).all()
    with pytest.raises(FileNotFoundError, match=rf"source shard .*{shard.name} is missing \(simulations 7..14"):
        read_trajectories(tmp_path / "train.h5")
    # Merging again refuses too, naming the missing shard.
    with pytest.raises(FileNotFoundError, match=rf"1 of 3 shard\(s\) missing: {shard.name}"):
        merge(tmp_path, 3, overwrite=True, log=_quiet)


def test_rerun_skips_complete_shards_and_redoes_broken_ones(single, tmp_path):
    settings = _settings(tmp_path, "n_shards=4", "n_test=0")
    generate(settings, log=_quiet)
    paths = [tmp_path / shard_name("train", i, 4) for i in range(4)]
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}
    with h5py.File(paths[1], "a") as f:        # killed before the complete flag was written
        f.attrs["complete"] = False
    paths[2].unlink()                           # never ran
    generate(_settings(tmp_path, "n_shards=4", "n_test=0", "shard_index=3", "seed=6", "overwrite=true"),
             log=_quiet)
    stale = tmp_path / f".{paths[0].name}.tmp-otherhost-123-deadbeef"
    stale.write_bytes(b"partial garbage from a killed attempt")
    # A finished shard of another dataset is a result: refused before any work, like a whole file.
    seed6 = (paths[3].stat().st_ino, paths[3].stat().st_mtime_ns)
    with pytest.raises(FileExistsError, match=rf"{paths[3].name} \(attribute seed=6, expected 5\)"):
        generate(settings, log=_quiet)
    assert (paths[3].stat().st_ino, paths[3].stat().st_mtime_ns) == seed6
    assert (paths[0].stat().st_ino, paths[0].stat().st_mtime_ns) == stamp[paths[0]]
    paths[3].unlink()
    messages = []
    generate(settings, log=messages.append)
    assert (paths[0].stat().st_ino, paths[0].stat().st_mtime_ns) == stamp[paths[0]], "complete shard kept"
    assert any(m.endswith("complete, skipped") and paths[0].name in m for m in messages)
    assert any(paths[1].name in m and "interrupted write" in m for m in messages)
    for p in paths[1:]:
        assert (p.stat().st_ino, p.stat().st_mtime_ns) != stamp[p]
    assert stale.read_bytes().startswith(b"partial"), "another attempt's temp file is left alone"
    notes = []
    merge(tmp_path, 4, log=notes.append)
    assert any("temporary file" in n for n in notes)
    _assert_same_data(tmp_path / "train.h5", single / "train.h5")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    real = gen.simulate

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the second block
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "simulate", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(_settings(tmp_path), log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_broken_simulation_named_by_dataset_index(tmp_path, monkeypatch):
    real = gen.initial_conditions

    def colliding(seed, split, start, stop, *args):
        x, v, q = real(seed, split, start, stop, *args)
        if start <= 16 < stop:
            x[16 - start, 1] = x[16 - start, 0]
        return x, v, q

    monkeypatch.setattr(gen, "initial_conditions", colliding)
    with pytest.raises(ValueError, match=r"train simulation\(s\) 16 \(seed 5\) produced non-finite"):
        generate(_settings(tmp_path), log=_quiet)
    assert not (tmp_path / "train.h5").exists()


def test_overwrite_refused_then_allowed(tmp_path):
    generate(_settings(tmp_path, "n_test=0"), log=_quiet)
    before = read_trajectories(tmp_path / "train.h5")["positions"]
    with pytest.raises(FileExistsError, match=rf"{tmp_path / 'train.h5'} already exists; pass overwrite=true"):
        generate(_settings(tmp_path, "n_test=0", "seed=8"), log=_quiet)
    np.testing.assert_array_equal(read_trajectories(tmp_path / "train.h5")["positions"], before)
    generate(_settings(tmp_path, "n_test=0", "seed=8", "overwrite=true"), log=_quiet)
    assert read_trajectories(tmp_path / "train.h5")["attrs"]["seed"] == 8


def test_reader_rejects_bad_files(single, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_trajectories(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_trajectories(tmp_path / "text.h5")
    for attr, value, pattern in [("format_version", 99, "format_version 99 is not supported"),
                                 ("complete", False, "incomplete")]:
        path = tmp_path / f"{attr}.h5"
        path.write_bytes((single / "test.h5").read_bytes())
        with h5py.File(path, "a") as f:
            f.attrs[attr] = value
        with pytest.raises(ValueError, match=pattern):
            read_trajectories(path)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "data"
    args = [f"out={out}", *TINY, "progress=false"]
    assert cli(["simulate", *args, "n_shards=2", "shard_index=0"]) == 0
    assert cli(["simulate", *args, "n_shards=2", "shard_index=1"]) == 0
    assert cli(["simulate-merge", f"out={out}", "n_shards=2"]) == 0
    assert read_trajectories(out / "train.h5")["positions"].shape == (23, 3, 5, 3)
    assert read_trajectories(out / "test.h5")["positions"].shape == (10, 3, 5, 3)
    capsys.readouterr()
    assert cli(["simulate-merge", f"out={out}", "n_shards=2"]) == 2
    assert "train.h5 already exists; pass overwrite=true" in capsys.readouterr().err
    assert cli(["simulate", *args, "n_bodis=3"]) == 2
    assert "unknown config key 'n_bodis'" in capsys.readouterr().err
    assert cli(["simulate", *args, "n_shards=2", "shard_index=2"]) == 2
    assert "shard_index=2 is out of range" in capsys.readouterr().err
    assert cli(["simulate-merge", f"out={tmp_path / 'empty'}", "n_shards=3"]) == 2
    assert "no shard files" in capsys.readouterr().err


def test_help_documents_every_key(capsys):
    assert cli(["simulate", "--help"]) == 0
    text = capsys.readouterr().out
    yaml_keys = [line.split(":")[0] for line in (config_dir() / "simulate.yaml").read_text().splitlines()
                 if line and not line.startswith("#")]
    for key in yaml_keys:
        line = next(row for row in text.splitlines() if row.strip().startswith(f"{key}="))
        assert "    # " in line, f"key {key} has no comment"
    assert "presets (preset=NAME): demo, egnn_protocol, nbody100, nbody1000, nri2d, paper, paper_x1000" in text


def test_presets_share_the_paper_physics():
    paper, demo = load_config("simulate", ["preset=paper"]), load_config("simulate", ["preset=demo"])
    for key in ("n_bodies", "dim", "n_steps", "sample_freq", "dt", "box_size", "loc_std", "vel_norm"):
        assert paper[key] == demo[key], key
    assert (paper.n_train, paper.n_test, paper.n_steps // paper.sample_freq - 1) == (5000, 1000, 49)
    assert demo.n_train < paper.n_train and demo.out != paper.out
