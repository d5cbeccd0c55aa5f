"""Bad command lines found by a fresh-user break attempt: each is one line naming the key or file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invattn.cli import main as cli
from invattn.guard import run_guarded

REPO = Path(__file__).resolve().parent.parent


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"invattn {command}: error: ")
    return err[0]


@pytest.mark.parametrize("override, message", [
    ("data.max_train_sims=0", "data.max_train_sims must be an integer >= 1 or null, got 0"),
    ("data.max_test_sims=-2", "data.max_test_sims must be an integer >= 1 or null, got -2"),
    ("data.val_sims=-3", "data.val_sims must be an integer >= 0, got -3"),
    ("train.velocity_loss_weight=-1", "train.velocity_loss_weight must be a non-negative number, got -1.0"),
    ("train.grad_clip=0", "train.grad_clip must be a positive number or null (off), got 0.0"),
    ("train.progress=maybe", "train.progress must be auto, true or false, got 'maybe'"),
])
def test_bad_training_values_name_the_key_before_any_work(nbody_tiny, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    assert cli(["train", f"data.dir={nbody_tiny}", f"run_dir={run}", override]) == 2
    assert one_error_line(capsys, "train").endswith(message)
    assert not run.exists(), "a refused run must not create its run_dir"


def test_run_dir_that_is_a_file_is_named_and_kept(nbody_tiny, tmp_path, capsys):
    run = tmp_path / "notes.txt"
    run.write_text("mine\n")
    assert cli(["train", f"data.dir={nbody_tiny}", f"run_dir={run}"]) == 2
    assert one_error_line(capsys, "train").endswith(f"run_dir {run} is a file, not a folder; "
                                                    f"choose another run_dir")
    assert run.read_text() == "mine\n"


def test_unknown_task_lists_the_tasks(capsys):
    for argv in (["train", "task=foo"], ["train", "task=foo", "--help"]):
        assert cli(argv) == 2
        assert one_error_line(capsys, "train") == "invattn train: error: task='foo' is not one of nbody, qm9"


def test_non_checkpoint_error_has_no_torch_advice(tmp_path, capsys):
    # A real pickle that weights_only refuses: torch's message goes on to suggest
    # weights_only=False, which is wrong advice for a file that is not a checkpoint.
    bogus = tmp_path / "model.pt"
    torch.save({"model": object}, bogus)
    assert cli(["evaluate", f"checkpoint={bogus}"]) == 2
    line = one_error_line(capsys, "evaluate")
    assert f"cannot read checkpoint {bogus}: it is truncated or not an invattn checkpoint" in line
    assert "weights_only" not in line and "arbitrary code" not in line, line


def test_interrupt_says_how_to_continue(capsys):
    def body():
        raise KeyboardInterrupt
    assert run_guarded("train", body) == 130
    assert capsys.readouterr().err.strip() == ("invattn train: interrupted (the last checkpoint is kept; "
                                               "run the same command again to resume)")
    assert run_guarded("sweep", body) == 130
    assert "resume=true" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["train", "--help"], ["--help"]])
def test_help_into_a_closed_pipe_has_no_traceback(args):
    # `invattn train --help | head -1`: the reader goes away before the keys are printed.
    proc = subprocess.Popen([sys.executable, "-m", "invattn.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "config key epochs must be an integer >= 1, got -1"),
    ("lr_epochs=0", "config key lr_epochs must be an integer >= 1, got 0"),
    ("cpus_per_trial=0", "config key cpus_per_trial must be a positive number, got 0.0"),
    ("seeds=[]", "config key seeds must list at least one seed, got []"),
    ("lr_grid=[1e-3,-1e-3]", "config key lr_grid must list positive learning rates, got [0.001, -0.001]"),
])
def test_reproduction_counts_fail_before_step_1(tmp_path, capsys, override, message):
    # epochs=-1 used to pass, simulate the dataset and run step 1's sweep before failing.
    data = tmp_path / "data"
    argv = ["reproduce-table1", f"data_dir={data}", f"results_dir={tmp_path / 'results'}", override]
    assert cli(argv) == 2
    assert one_error_line(capsys, "reproduce-table1").endswith(message)
    assert not data.exists() and not (tmp_path / "results").exists()


def test_check_folder_names_the_file_in_the_way(tmp_path):
    from invattn.checks import check_folder

    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    assert check_folder("out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "a check creates nothing"
    with pytest.raises(ValueError, match=f"^out {note} is a file, not a folder; choose another out$"):
        check_folder("out", note)
    with pytest.raises(ValueError, match=f"^out {note / 'a' / 'b'} is inside {note}, which is a file"):
        check_folder("out", note / "a" / "b")


def test_folders_inside_a_file_are_named_before_any_work(nbody_tiny, tmp_path, capsys):
    """A run_dir/out/output/results_dir under a file: one line naming the key, before training
    (lorentz trained both models, then died at its first write with a bare '[Errno 17]')."""
    import time

    import ray

    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    inside = f"is inside {note}, which is a file, not a folder"
    assert cli(["train", f"data.dir={nbody_tiny}", f"run_dir={note / 'run'}"]) == 2
    assert one_error_line(capsys, "train").endswith(f"run_dir {note / 'run'} {inside}; choose another run_dir")
    for out in (note, note / "data"):
        assert cli(["simulate", f"out={out}", "n_train=2", "n_test=2"]) == 2
        assert f"out {out} " in one_error_line(capsys, "simulate")
    start = time.monotonic()
    assert cli(["lorentz", f"out={note / 'l'}", "n_train=400", "n_test=100", "epochs=3"]) == 2
    assert one_error_line(capsys, "lorentz").endswith(f"out {note / 'l'} {inside}; choose another out")
    assert time.monotonic() - start < 5, "refused after training"
    # evaluate checks output= before it reads the checkpoint
    assert cli(["evaluate", f"checkpoint={tmp_path / 'never.pt'}", f"output={note / 'm.json'}"]) == 2
    assert one_error_line(capsys, "evaluate").endswith(f"output {note / 'm.json'} {inside}; choose another output")
    assert cli(["evaluate", f"checkpoint={tmp_path / 'never.pt'}", f"output={tmp_path}"]) == 2
    assert one_error_line(capsys, "evaluate").endswith(f"give the JSON file's path, e.g. output={tmp_path / 'metrics.json'}")
    # the sweep refuses before Ray starts
    assert cli(["sweep", f"results_dir={note}", f"data.dir={nbody_tiny}", "search.lr=[1e-3]"]) == 2
    assert one_error_line(capsys, "sweep").endswith(f"results_dir {note} is a file, not a folder; choose another results_dir")
    assert not ray.is_initialized()
    assert note.read_text() == "mine\n"


def test_one_dimensional_data_points_to_the_egnn(tmp_path, capsys):
    """The simulator writes dim=1; no attention group is 1D, and 'use model.group=E1' named none."""
    data = tmp_path / "d1"
    assert cli(["simulate", f"out={data}", "dim=1", "n_train=4", "n_test=2", "n_bodies=3"]) == 0
    capsys.readouterr()
    assert cli(["train", f"data.dir={data}", f"run_dir={tmp_path / 'run'}"]) == 2
    line = one_error_line(capsys, "train")
    assert "holds 1D trajectories" in line and "architecture=egnn" in line and "E1" not in line


def test_the_other_tasks_data_folder_names_the_task(nbody_tiny, tmp_path, capsys):
    """data.dir of N-body trajectories with task=qm9 (and the other way round) says which task fits."""
    assert cli(["train", "task=qm9", f"data.dir={nbody_tiny}", f"run_dir={tmp_path / 'q'}"]) == 2
    assert one_error_line(capsys, "train").endswith("holds N-body trajectories, train.h5: train on them with task=nbody)")
    qm9 = tmp_path / "qm9"
    qm9.mkdir()
    (qm9 / "manifest.json").write_text("{}\n")
    assert cli(["train", f"data.dir={qm9}", f"run_dir={tmp_path / 'n'}"]) == 2
    assert one_error_line(capsys, "train").endswith("holds preprocessed QM9 data, manifest.json: train on it with task=qm9)")


def test_help_shows_the_values_of_the_given_preset_and_overrides(capsys):
    """`invattn simulate preset=demo --help` listed the base defaults (n_train=5000), not what the
    command would run with (the demo preset's 1000)."""
    assert cli(["simulate", "--help"]) == 0
    assert "  n_train=5000  (int)" in capsys.readouterr().out
    assert cli(["simulate", "preset=demo", "n_test=7", "--help"]) == 0
    out = capsys.readouterr().out
    assert "values with preset=demo n_test=7" in out
    assert "  n_train=1000  (int)" in out and "  n_test=7  (int)" in out and "out='data/nbody_demo'" in out
    assert cli(["train", "task=qm9", "preset=small", "--help"]) == 0
    assert "preset='small'" in capsys.readouterr().out
    assert cli(["train", "train.epochz=3", "--help"]) == 2
    assert "did you mean train.epochs" in one_error_line(capsys, "train")


def test_evaluate_on_data_of_another_dimension_points_to_data_dir(nbody_tiny, tmp_path, capsys):
    """A 2D checkpoint evaluated with data_dir= of 3D data: the advice is about data_dir=, not the
    model.group= a trained model cannot take."""
    data2d, run = tmp_path / "d2", tmp_path / "run"
    assert cli(["simulate", f"out={data2d}", "preset=nri2d", "n_train=8", "n_test=4"]) == 0
    assert cli(["train", f"data.dir={data2d}", f"run_dir={run}", "model.group=E2", "train.epochs=1",
                "model.n_layers=1", "model.mlp_hidden=8", "train.tensorboard=false"]) == 0
    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.pt"
    assert cli(["evaluate", f"checkpoint={ckpt}", f"data_dir={nbody_tiny}"]) == 2
    line = one_error_line(capsys, "evaluate")
    assert "holds 3D trajectories" in line and f"point data_dir= at data like those it was trained on: {data2d}" in line
    assert cli(["evaluate", f"checkpoint={ckpt}", f"data_dir={data2d}"]) == 0


def test_a_tilde_path_means_the_home_folder(tmp_path, monkeypatch, capsys):
    """`out=~/data` reaches the program unexpanded (the shell expands ~ only at a word's start):
    it used to make a folder named '~' in the working directory."""
    from invattn.pipeline.config import load_config

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    cfg = load_config("train_nbody", ["data.dir=~/nbody", "run_dir=~/runs/a"])
    assert cfg.data.dir == str(home / "nbody") and cfg.run_dir == str(home / "runs" / "a")
    assert load_config("train_nbody", ["data.dir=a~/b"]).data.dir == "a~/b"
    assert cli(["simulate", "out=~/d", "n_train=2", "n_test=2", "n_bodies=3"]) == 0
    assert (home / "d" / "train.h5").is_file() and not (tmp_path / "~").exists()


def test_merge_with_another_shard_count_names_the_one_on_disk(tmp_path, capsys):
    out = tmp_path / "sh"
    assert cli(["simulate", f"out={out}", "n_train=6", "n_test=3", "n_bodies=3", "n_shards=3", "shard_index=0"]) == 0
    capsys.readouterr()
    assert cli(["simulate-merge", f"out={out}", "n_shards=2"]) == 2
    assert one_error_line(capsys, "simulate-merge").endswith(
        f"no shard files *.shard-*-of-00002.h5 in {out} (it holds shards of n_shards=3)")


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test (an in-process Ray or Dask started by an earlier
    test may have installed theirs), the previous one back afterwards."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_loop_between_steps(default_sigint):
    """The first SIGINT waits for check(); a second one raises at once; one left over raises on exit."""
    import os
    import signal

    from invattn.guard import interrupt_between_steps

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_between_steps() as check:
            for step in range(3):
                os.kill(os.getpid(), signal.SIGINT)  # delivered at once to this (main) thread
                steps.append(step)  # the step still ends
                check()
    assert steps == [0]
    with pytest.raises(KeyboardInterrupt):
        with interrupt_between_steps():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after first")
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("never")
    assert steps[-1] == "after first"
    with pytest.raises(KeyboardInterrupt):
        with interrupt_between_steps():
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_garbage_collection_callback_is_not_lost(monkeypatch, default_sigint):
    """Why simulate ignored Ctrl-C now and then: Python raises the KeyboardInterrupt inside whatever
    runs, here a weakref callback (h5py/NumPy objects die at every block), which only prints
    "Exception ignored"."""
    import os
    import signal
    import weakref

    from invattn.guard import interrupt_between_steps

    class Thing:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while the callback runs
        for _ in range(3):
            pass

    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: lost.append(info.exc_type))
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # without the guard: "Exception ignored", nothing raised here
    assert ref() is None and lost == [KeyboardInterrupt]
    with pytest.raises(KeyboardInterrupt):
        with interrupt_between_steps() as check:
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing
            check()


def test_ctrl_c_stops_simulate_and_leaves_no_file(tmp_path):
    """One Ctrl-C during `invattn simulate` stops it with the one-line notice and no file left (it was
    lost now and then: "Exception ignored in ... weakref ... KeyboardInterrupt", and the run went on)."""
    import signal
    import time

    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "invattn.cli", "simulate", "preset=paper", f"out={out}",
                             "n_train=120000", "n_test=10", "progress=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".train.h5*")):
        time.sleep(0.2)
    time.sleep(1.5)  # some blocks written
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "invattn simulate: interrupted" in err and "Exception ignored" not in err, err[-2000:]
    assert list(out.iterdir()) == []
