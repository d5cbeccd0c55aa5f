"""Training keeps what it wrote (issue 13): one run per run_dir, a full disk during a checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from invattn.pipeline.training.metrics_log import MetricsLog
from tinyfs import run_on_tiny_fs

REPO = Path(__file__).resolve().parent.parent
TINY = ["train.batch_size=16", "train.num_threads=1", "model.group=E3", "train.tensorboard=false",
        "train.progress=false"]


def _train_argv(data, run_dir, *extra):
    return [sys.executable, "-m", "invattn.cli", "train", f"data.dir={data}", f"run_dir={run_dir}",
            *TINY, *extra]


def test_second_run_on_the_same_run_dir_is_refused(nbody_tiny, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_train_argv(nbody_tiny, run_dir, "train.epochs=500"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not MetricsLog.read(run_dir / "metrics.jsonl"):   # the first run is training
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run logged no epoch"
            time.sleep(0.2)
        second = subprocess.run(_train_argv(nbody_tiny, run_dir, "train.epochs=500"), cwd=REPO,
                                capture_output=True, text=True, timeout=240)
        assert first.poll() is None, "the first run was still training during the second"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert second.returncode == 2
    err = second.stderr.strip().splitlines()
    assert err[-1] == (f"invattn train: error: run_dir {run_dir} is in use by another run "
                       f"(pid {first.pid} on {os.uname().nodename}); wait for it to finish or "
                       f"choose another run_dir"), err
    assert "Traceback" not in second.stderr
    epochs = [r["epoch"] for r in MetricsLog.read(run_dir / "metrics.jsonl")]
    assert epochs == list(range(1, len(epochs) + 1)), f"duplicate or missing epochs: {epochs}"
    # The lock went with the first process: the same command now resumes its run.
    # The lock went with the first process: a third run gets past it (and stops at the
    # resume check, since it asks for another number of epochs).
    again = subprocess.run(_train_argv(nbody_tiny, run_dir, "train.epochs=7"), cwd=REPO,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 2 and "trained with other settings" in again.stderr, again.stderr


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(nbody_tiny, tmp_path):
    # A real 2 MiB tmpfs: the first checkpoint (about 1.5 MB) fits, the second one's temporary
    # file does not.
    mnt = tmp_path / "mnt"
    script = textwrap.dedent(f"""
        import contextlib, io, json, os
        from invattn.cli import main
        from invattn.pipeline.training.checkpoint import load_checkpoint
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["train", "data.dir={nbody_tiny}", "run_dir={mnt}/run", "train.epochs=3",
                       *{TINY!r}])
        ckpt = load_checkpoint("{mnt}/run/checkpoints/last.pt")
        print(json.dumps({{"rc": rc, "err": err.getvalue(), "epoch": ckpt["epoch"],
                          "files": sorted(os.listdir("{mnt}/run/checkpoints"))}}))
    """)
    result, stderr = run_on_tiny_fs(script, mnt, "size=2m")
    assert result["rc"] == 2
    assert result["err"].strip().splitlines()[-1] == (
        f"invattn train: error: cannot write checkpoint {mnt}/run/checkpoints/last.pt: "
        f"no space left on device; the previous checkpoint is kept")
    assert "Traceback" not in result["err"] + stderr
    assert result["epoch"] == 1 and result["files"] == ["last.pt"], result


def test_full_disk_before_the_first_epoch_names_the_file(nbody_tiny, tmp_path):
    # A 4 KiB tmpfs: the run lock fits, config.yaml does not.
    mnt = tmp_path / "mnt"
    script = textwrap.dedent(f"""
        import contextlib, io, json, os
        from invattn.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["train", "data.dir={nbody_tiny}", "run_dir={mnt}/run", "train.epochs=1", *{TINY!r}])
        print(json.dumps({{"rc": rc, "err": err.getvalue(), "files": sorted(os.listdir("{mnt}/run"))}}))
    """)
    result, stderr = run_on_tiny_fs(script, mnt, "size=4k")
    assert result["rc"] == 2
    assert result["err"].strip().splitlines()[-1] == \
        f"invattn train: error: cannot write {mnt}/run/config.yaml: no space left on device"
    assert result["files"] == [".lock"], "no empty or partial config.yaml is left behind"


def test_refused_model_setting_leaves_no_run_dir_and_keeps_an_existing_one(nbody_tiny, tmp_path, capsys):
    from invattn.cli import main

    # model.heads must divide the channels: the refusal comes before run_dir is created.
    fresh = tmp_path / "fresh" / "run"
    assert main(["train", f"data.dir={nbody_tiny}", f"run_dir={fresh}", "train.epochs=1", *TINY,
                 "model.heads=5"]) == 2
    assert "model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not fresh.exists() and not fresh.parent.exists(), "a refused run leaves no (empty) run_dir"

    # A run_dir that holds a checkpoint is left byte for byte as it was by a refused rerun.
    run = tmp_path / "done"
    assert main(["train", f"data.dir={nbody_tiny}", f"run_dir={run}", "train.epochs=1", *TINY]) == 0
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert Path("checkpoints/last.pt") in before
    capsys.readouterr()
    for extra in (["model.heads=5"], ["model.heads=5", "resume=true"]):
        assert main(["train", f"data.dir={nbody_tiny}", f"run_dir={run}", "train.epochs=2", *TINY,
                     *extra]) == 2
        assert "model" in capsys.readouterr().err.strip().splitlines()[-1]
        assert {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
