"""Dataset regeneration as a SLURM array job (slurm/regenerate_nbody.sh, slurm/simulate.sh).

Real SLURM (`bash slurm/dev-cluster.sh up`), real shards and a real virtual-dataset merge,
compared bit for bit with a single-process `invattn simulate` run of the same seed.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from invattn.cli import main as cli
from invattn.sweeps.slurm_wait import wait_job

ROOT = Path(__file__).resolve().parents[1]
REGEN = ROOT / "slurm" / "regenerate_nbody.sh"
K = 4
# Long trajectories with few frames: each shard takes a few seconds, long enough to cancel
# the array between two shards, while the files stay tiny.
PARAMS = ["n_train=8", "n_test=4", "n_steps=1000000", "sample_freq=50000", "seed=5"]
SBATCH = ["--sbatch", "--oversubscribe", "--sbatch", "--time=5"]
SPLITS = ("train", "test")


def shard_files(out: Path) -> dict[str, tuple[int, int]]:
    """Finished shard files (final names; the simulator renames when complete) -> (inode, mtime_ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*.shard-*.h5"))}


def assert_same_dataset(merged_dir: Path, reference_dir: Path) -> None:
    for split in SPLITS:
        with h5py.File(merged_dir / f"{split}.h5") as got, h5py.File(reference_dir / f"{split}.h5") as ref:
            assert got.attrs.get("virtual"), f"{split}.h5 is not a virtual-dataset merge"
            assert sorted(got.keys()) == sorted(ref.keys())
            for name in ref:
                np.testing.assert_array_equal(got[name][()], ref[name][()], err_msg=f"{split}/{name}")
            assert got.attrs["seed"] == ref.attrs["seed"] == 5


def regenerate(*args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REGEN), *args], capture_output=True, text=True, timeout=timeout)


def job_ids(stdout: str) -> tuple[str, str]:
    array = re.search(r"submitted array job (\d+)", stdout)
    merge = re.search(r"submitted merge job (\d+)", stdout)
    assert array and merge, stdout
    return array.group(1), merge.group(1)


def queued(*jobs: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"],
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same dataset from one process (n_shards=1)."""
    out = tmp_path_factory.mktemp("nbody_reference")
    assert cli(["simulate", f"out={out}", "num_threads=1", "progress=false", *PARAMS]) == 0
    return out


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_array_job_regenerates_the_single_process_dataset(slurm_cluster, reference, tmp_path):
    out = tmp_path / "nbody"
    run = regenerate("--wait", *SBATCH, str(out), str(K), *PARAMS)
    assert run.returncode == 0, run.stdout + run.stderr
    array, merge = job_ids(run.stdout)
    assert sorted(shard_files(out)) == sorted(f"{s}.shard-{i:05d}-of-{K:05d}.h5"
                                              for s in SPLITS for i in range(K))
    assert_same_dataset(out, reference)
    # One log per array task and one for the merge; each task ran its own shard index.
    for i in range(K):
        log = (out / "logs" / f"simulate-{array}_{i}.out").read_text()
        assert f"shard {i} of {K}" in log and f"train.shard-{i:05d}-of-{K:05d}.h5" in log, log
    assert "merge done" in (out / "logs" / f"merge-{merge}.out").read_text()


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_resubmission_after_scancel_computes_only_missing_shards(slurm_cluster, reference, tmp_path):
    out = tmp_path / "nbody"
    # --throttle 1: one shard at a time, so the array can be cancelled between shards.
    run = regenerate("--throttle", "1", *SBATCH, str(out), str(K), *PARAMS)
    assert run.returncode == 0, run.stdout + run.stderr
    array, merge = job_ids(run.stdout)
    first_done = out / f"test.shard-00000-of-{K:05d}.h5"   # a task writes train, then test
    # Fails at once if the array ends (or leaves the queue) without writing shard 0.
    wait_job(f"{array}_0", done=first_done.exists, logs=[out / "logs" / f"simulate-{array}_0.out"],
             poll=0.1, timeout=120)
    subprocess.run(["scancel", array], check=True)
    # The merge job depended on the array (afterok): --kill-on-invalid-dep removes it.
    deadline = time.monotonic() + 60
    while queued(array, merge):
        assert time.monotonic() < deadline, f"jobs still queued after scancel: {queued(array, merge)}"
        time.sleep(0.5)
    finished = shard_files(out)
    assert first_done.name in finished
    assert f"test.shard-{K - 1:05d}-of-{K:05d}.h5" not in finished, \
        "all shards finished before the cancel; the test cannot tell skipping from recomputing"
    assert not (out / "train.h5").exists(), "merge ran although the array was cancelled"

    again = regenerate("--wait", *SBATCH, str(out), str(K), *PARAMS)
    assert again.returncode == 0, again.stdout + again.stderr
    array2, _ = job_ids(again.stdout)
    now = shard_files(out)
    assert len(now) == 2 * K
    for name, stamp in finished.items():
        assert now[name] == stamp, f"{name} was rewritten (inode, mtime) {stamp} -> {now[name]}"
    logs = "".join(p.read_text() for p in (out / "logs").glob(f"simulate-{array2}_*.out"))
    for name in now:
        if name in finished:
            assert f"{name}: complete, skipped" in logs
        else:
            assert re.search(re.escape(name) + r": \d+ simulations", logs), f"{name} not computed:\n{logs}"
    assert_same_dataset(out, reference)


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_failed_shard_cancels_the_merge_and_wait_reports_it(slurm_cluster, tmp_path):
    out = tmp_path / "nbody"
    run = regenerate("--wait", *SBATCH, str(out), "2", "n_train=4", "n_test=0", "n_bodies=1")
    assert run.returncode != 0
    assert "ended CANCELLED" in run.stderr and "resubmit" in run.stderr, run.stdout + run.stderr
    array, _ = job_ids(run.stdout)
    log = (out / "logs" / f"simulate-{array}_0.out").read_text()
    assert "n_bodies" in log, log          # the simulator's own error message is in the log
    assert not list(out.glob("*.h5"))


@pytest.mark.parametrize("args, message", [
    (["OUT", "0"], "N_SHARDS must be a positive integer"),
    (["OUT", "4", "shard_index=1"], "is set by this script"),
    (["OUT", "4", "seed"], "expected key=value"),
    (["--throttle", "x", "OUT", "4"], "--throttle must be a positive integer"),
])
def test_regenerate_rejects_bad_arguments_before_submitting(tmp_path, args, message):
    run = subprocess.run(["bash", str(REGEN), *[a.replace("OUT", str(tmp_path / "o")) for a in args]],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()
