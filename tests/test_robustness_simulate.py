"""`invattn simulate` refuses what would lose data or cannot fit (issue 13): finished shards of
another dataset, runs far beyond the free disk or memory, and a full disk half way through."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from invattn.cli import main as cli
from invattn.simulator.generate import shard_name
from invattn.simulator.io import read_trajectories
from tinyfs import run_on_tiny_fs

REPO = Path(__file__).resolve().parent.parent
SMALL = ["n_steps=300", "sample_freq=100", "progress=false"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    line = err[-1]
    assert line.startswith("invattn simulate: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def _stamps(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_finished_shards_of_another_seed_are_not_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "big"
    assert cli(["simulate", f"out={out}", "n_train=8", "n_test=4", "n_shards=2", "seed=42", *SMALL]) == 0
    before = _stamps(out)
    data = read_trajectories(out / shard_name("train", 0, 2))["positions"]
    assert cli(["simulate", f"out={out}", "n_train=8", "n_test=4", "n_shards=2", "seed=7", *SMALL]) == 2
    _one_line_error(capsys, shard_name("train", 0, 2), "attribute seed=42, expected 7", "overwrite=true")
    assert _stamps(out) == before, "no shard was touched"
    assert (read_trajectories(out / shard_name("train", 0, 2))["positions"] == data).all()
    # A single shard index follows the same rule (a SLURM array task).
    assert cli(["simulate", f"out={out}", "n_train=8", "n_test=4", "n_shards=2", "seed=7",
                "shard_index=1", *SMALL]) == 2
    assert _stamps(out) == before
    assert cli(["simulate", f"out={out}", "n_train=8", "n_test=4", "n_shards=2", "seed=7",
                "overwrite=true", *SMALL]) == 0
    assert read_trajectories(out / shard_name("test", 1, 2))["attrs"]["seed"] == 7


@pytest.mark.parametrize("override", ["n_train=1000000000", "n_bodies=1000000"])
def test_requests_beyond_the_free_disk_are_refused_up_front(tmp_path, capsys, override):
    out = tmp_path / "huge"
    assert cli(["simulate", f"out={out}", override, *SMALL]) == 2
    line = _one_line_error(capsys, "simulate would write about", "is free there", str(out))
    assert "lower n_train/n_test" in line
    assert list(out.iterdir()) == [], "nothing was allocated"


def test_blocks_beyond_the_available_memory_are_refused_up_front(tmp_path):
    # A 1.5 GiB address-space limit stands for a small machine: 40 simulations of 20000 bodies
    # per block need about 3.6 GiB, while the files (about 1.8 GiB) would fit on the disk.
    out = tmp_path / "mem"
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 29, resource.RLIM_INFINITY))
        from invattn.cli import main
        sys.exit(main(["simulate", "out={out}", "n_bodies=20000", "n_train=40", "n_test=0",
                       "block_size=40", "n_steps=5000", "sample_freq=100", "progress=false"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("invattn simulate: error: a block of 40 simulations needs about"), line
    assert "lower block_size (at most" in line
    assert not any(out.iterdir())


def test_full_disk_half_way_keeps_the_finished_file(tmp_path):
    # A real tmpfs with 3 inodes: the folder and train.h5 fit, test.h5 finds no space left.
    mnt = tmp_path / "mnt"
    script = textwrap.dedent(f"""
        import contextlib, io, json, os, sys
        from invattn.cli import main
        from invattn.simulator.io import read_trajectories
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["simulate", "out={mnt}/o", "n_train=20", "n_test=20", "n_steps=300",
                       "sample_freq=100", "progress=false"])
        train = read_trajectories("{mnt}/o/train.h5")
        print(json.dumps({{"rc": rc, "err": err.getvalue(), "files": sorted(os.listdir("{mnt}/o")),
                          "train_sims": int(train["positions"].shape[0])}}))
    """)
    result, stderr = run_on_tiny_fs(script, mnt, "size=16m,nr_inodes=3")
    assert result["rc"] == 2
    lines = result["err"].strip().splitlines()
    assert lines[-1] == f"invattn simulate: error: cannot write {mnt}/o/test.h5: no space left on device"
    assert "Traceback" not in result["err"] + stderr
    assert result["files"] == ["train.h5"] and result["train_sims"] == 20


def test_file_size_limit_half_way_is_one_line_and_keeps_the_finished_file(tmp_path):
    # RLIMIT_FSIZE stands for a disk that fills during the second file: before the fix HDF5
    # printed a dozen tracebacks and the process died with a segmentation fault.
    out = tmp_path / "o"
    limit = 2 << 20   # train.h5 (100 sims, about 1.3 MiB) fits, test.h5 (300 sims) does not

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "invattn.cli", "simulate", f"out={out}", "n_train=100",
                           "n_test=300", "block_size=50", "progress=false"],
                          capture_output=True, text=True, cwd=REPO, preexec_fn=limited, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"invattn simulate: error: cannot write {out}/test.h5: file too large (file size limit)"
    assert sorted(os.listdir(out)) == ["train.h5"]
    assert read_trajectories(out / "train.h5")["positions"].shape[0] == 100


def test_full_disk_during_a_merge_is_one_line_and_keeps_the_shards(tmp_path):
    # A real tmpfs with 6 inodes: its root, the folder and the 4 shards; the merged file has none.
    mnt = tmp_path / "mnt"
    script = textwrap.dedent(f"""
        import contextlib, io, json, os
        from invattn.cli import main
        from invattn.simulator.io import read_trajectories
        with contextlib.redirect_stderr(io.StringIO()):
            first = main(["simulate", "out={mnt}/o", "n_train=6", "n_test=4", "n_shards=2", "n_steps=300",
                          "sample_freq=100", "progress=false"])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["simulate-merge", "out={mnt}/o", "n_shards=2"])
        shard = read_trajectories("{mnt}/o/train.shard-00000-of-00002.h5")
        print(json.dumps({{"first": first, "rc": rc, "err": err.getvalue(),
                          "files": sorted(os.listdir("{mnt}/o")), "n": int(shard["positions"].shape[0])}}))
    """)
    result, stderr = run_on_tiny_fs(script, mnt, "size=16m,nr_inodes=6")
    assert result["first"] == 0 and result["rc"] == 2
    assert result["err"].strip().splitlines()[-1] == \
        f"invattn simulate-merge: error: cannot write {mnt}/o/train.h5: no space left on device"
    assert "Traceback" not in result["err"] + stderr
    assert result["files"] == [shard_name(s, i, 2) for s in ("test", "train") for i in range(2)]
    assert result["n"] == 3
