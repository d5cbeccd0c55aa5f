"""Sweeps fail loudly and early (issue 13): search values the model refuses are named before Ray
starts, a failed trial makes the exit code non-zero, the local token file is private, a missing
$RAY_AUTH_TOKEN_PATH is one line; the closing lines say where TensorBoard logs are, and the
trials table is sorted by the metric.  The Ray part runs one real local sweep (and its resume)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from invattn.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["train.epochs=2", "train.batch_size=32", "train.num_threads=1", "data.max_test_sims=32",
         "model.group=E3", "verbose=0"]


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_search_value_the_model_refuses_is_named_before_ray_starts(nbody_tiny, tmp_path, capsys):
    import ray

    ray_before = ray.is_initialized()   # False unless an earlier test left Ray running here
    rc = cli(["sweep", "name=t", f"results_dir={tmp_path}", f"data.dir={nbody_tiny}", *TRAIN,
              "model.group=SE3", "search.subdeterminants=[all,99]", "search.lr=[1e-3]"])
    assert rc == 2
    line = _last_error_line(capsys)
    assert line.startswith("invattn sweep: error: search.subdeterminants=99 is not a valid model: "), line
    assert "out of range: choose 1..10" in line
    assert not (tmp_path / "t").exists(), "nothing was started or written"
    assert ray.is_initialized() == ray_before


@pytest.mark.parametrize("override, key, value", [("search.lr=[abc]", "search.lr", "abc"),
                                                  ("search.seeds=[0,x]", "search.seeds", "x"),
                                                  ("search.lr=abc", "search.lr", "abc")])
def test_bad_search_entries_name_the_key(nbody_tiny, tmp_path, capsys, override, key, value):
    rc = cli(["sweep", "name=t", f"results_dir={tmp_path}", f"data.dir={nbody_tiny}", *TRAIN, override])
    assert rc == 2
    line = _last_error_line(capsys)
    assert key in line and repr(value) in line, line
    assert not (tmp_path / "t").exists()


def test_non_numeric_search_entries_are_named_by_the_search_space():
    # The same check where the space is built (configs that bypass the command line).
    from omegaconf import OmegaConf

    from invattn.sweeps.space import param_space

    search = OmegaConf.create({"lr": [1e-3, "abc"], "subdeterminants": ["all"], "seeds": [0]})
    with pytest.raises(ValueError, match="search.lr entries must be numbers, got 'abc'"):
        param_space(search)
    search = OmegaConf.create({"lr": ["1e-3"], "subdeterminants": ["all"], "seeds": [0, 1.5]})
    with pytest.raises(ValueError, match="search.seeds entries must be integers, got 1.5"):
        param_space(search)


def test_missing_token_file_is_one_line(nbody_tiny, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    import ray

    ray_before = ray.is_initialized()
    rc = cli(["sweep", "name=t", f"results_dir={tmp_path}", f"data.dir={nbody_tiny}", *TRAIN, "search.lr=[1e-3]"])
    assert rc == 2
    line = _last_error_line(capsys)
    assert line.startswith(f"invattn sweep: error: RAY_AUTH_TOKEN_PATH={missing} does not exist; "), line
    assert ray.is_initialized() == ray_before


def test_unreachable_ray_address_fails_fast_in_one_line(nbody_tiny, tmp_path, capsys):
    import socket
    import time

    import ray

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_before = ray.is_initialized()
    start = time.monotonic()
    rc = cli(["sweep", "name=t", f"results_dir={tmp_path}", f"data.dir={nbody_tiny}", *TRAIN,
              "search.lr=[1e-3]", f"ray.address=127.0.0.1:{port}"])
    elapsed = time.monotonic() - start
    assert rc == 2
    line = _last_error_line(capsys)
    assert f"no Ray cluster answers at ray.address=127.0.0.1:{port}" in line, line
    assert elapsed < 30, f"took {elapsed:.0f} s: Ray's own retries were not short-cut"
    assert ray.is_initialized() == ray_before


def _sweep(home: Path, results: Path, *extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "invattn.cli", "sweep", "name=mixed", f"results_dir={results}",
         "ray.num_cpus=2", "ray.dashboard=false", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mixed_sweep(nbody_tiny, tmp_path_factory):
    """A real local sweep in a fresh $HOME: lr 1e9 diverges at epoch 1, two rates train."""
    home, results = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("results")
    proc = _sweep(home, results, f"data.dir={nbody_tiny}", *TRAIN, "search.lr=[3e-3,1e9,1e-3]",
                  "max_failures=0")
    return home, results, proc


@pytest.mark.slow
def test_a_failed_trial_makes_the_sweep_fail_with_the_reason(mixed_sweep):
    _, results, proc = mixed_sweep
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("invattn sweep: error: 1 of 3 trial(s) of sweep 'mixed' failed: "), line
    assert "non-finite training loss at epoch 1; lower optim.lr (now 1000000000.0)" in line
    assert "allow_failed_trials=true" in line
    # The trials that worked are kept: table, best trial and its checkpoint.
    table = pd.read_csv(results / "mixed" / "trials.csv")
    assert sorted(table.status) == ["ERROR", "OK", "OK"]
    assert (results / "mixed" / "best.json").is_file()


@pytest.mark.slow
def test_local_token_file_is_private(mixed_sweep):
    home, _, proc = mixed_sweep
    token = home / ".ray" / "auth_token"
    assert token.is_file(), proc.stderr[-2000:]
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text().strip()) >= 32


@pytest.mark.slow
def test_trials_table_is_sorted_by_the_metric(mixed_sweep):
    _, results, proc = mixed_sweep
    table = pd.read_csv(results / "mixed" / "trials.csv")
    done = table[table.status == "OK"]
    assert list(done.test_mse_x) == sorted(done.test_mse_x) and len(done) == 2
    assert table.status.iloc[-1] == "ERROR", "a trial without the metric comes last"
    printed = proc.stdout.split("\nTrials:\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert [float(row.split()[table.columns.get_loc("lr")]) for row in printed] == list(table.lr)


@pytest.mark.slow
def test_closing_lines_say_where_tensorboard_logs_are(mixed_sweep):
    _, results, proc = mixed_sweep
    exp = results / "mixed" / "ray" / "mixed"
    assert f"TensorBoard (every trial's run/tensorboard): tensorboard --logdir {exp}" in proc.stdout
    events = list(exp.glob("*/run/tensorboard/events.out.tfevents.*"))
    assert len(events) == 3, events


@pytest.mark.slow
def test_allow_failed_trials_accepts_them_on_resume(mixed_sweep):
    home, results, _ = mixed_sweep
    proc = _sweep(home, results, "verbose=0", "resume=true", "allow_failed_trials=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Best trial (test_mse_x, min)" in proc.stdout
    table = pd.read_csv(results / "mixed" / "trials.csv")
    assert sorted(table.status) == ["ERROR", "OK", "OK"]


def test_existing_world_readable_token_is_narrowed_and_a_missing_one_refused_when_joining(
        tmp_path, monkeypatch, capsys):
    from invattn.sweeps.ray_cluster import ensure_token_file

    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    with pytest.raises(FileNotFoundError, match=f"there is no token at {token}"):
        ensure_token_file(create=False)    # joining a cluster: never invent a token
    assert not token.exists()
    token.parent.mkdir()
    token.write_text("a" * 64)
    token.chmod(0o644)                     # as an older Ray left it
    ensure_token_file(create=True)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "a" * 64
    assert f"note: {token} was readable by others (mode 644); now 600" in capsys.readouterr().out


def test_a_trial_bigger_than_the_local_ray_instance_is_refused(nbody_tiny, tmp_path):
    """resources.cpus_per_trial above the local instance's CPUs (or a GPU on a machine without
    one): Tune kept the trials PENDING forever, with a warning a minute later."""
    import time

    start = time.monotonic()
    proc = _sweep(tmp_path / "home", tmp_path / "results", f"data.dir={nbody_tiny}", *TRAIN,
                  "search.lr=[1e-3]", "resources.cpus_per_trial=3")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("each trial asks for resources.cpus_per_trial=3 and resources.gpus_per_trial=0, but the local "
            "Ray instance has 2 CPU(s) and 0 GPU(s): no trial could ever start") in proc.stderr
    assert time.monotonic() - start < 120
