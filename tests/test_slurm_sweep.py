"""Ray Tune sweeps as cluster jobs: ``sbatch slurm/sweep.sh`` and ``invattn sweep launcher=submitit``.

The `slurm`-marked tests run on the real dev cluster (``bash slurm/dev-cluster.sh up``; two
one-CPU virtual nodes n1, n2 on this machine), with ``--oversubscribe`` so that they never
queue behind a teammate's job.  The smoke configuration: 2 trials, 1 epoch, 64 + 16 simulations.
(That two Ray nodes on one host form one cluster is checked by
``test_slurm.py::test_ray_head_on_first_node_and_worker_on_second``; here the sweeps run on it.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main as cli
from sweeps import submitit_launcher
from sweeps.cli import load_sweep_configs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["train_preset=demo", "search.lr=[1e-3,3e-3]", "train.epochs=1", "train.tensorboard=false",
         "verbose=0"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke dataset of the README: `invattn simulate preset=demo n_train=64 n_test=16`."""
    out = tmp_path_factory.mktemp("nbody_smoke")
    assert cli(["simulate", "preset=demo", "n_train=64", "n_test=16", f"out={out}", "progress=false"]) == 0
    return out


def job_state(job: str) -> tuple[str, str]:
    """(JobState, ExitCode) from scontrol (no accounting on the dev cluster)."""
    info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in info.split() if "=" in f)
    return fields.get("JobState", ""), fields.get("ExitCode", "")


def wait_job(job: str, timeout: float = 240) -> str:
    """Like ``sbatch --wait`` but polling twice a second; returns the final JobState."""
    deadline = time.monotonic() + timeout
    while (state := job_state(job)[0]) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job} not finished in {timeout} s (state {state})"
        time.sleep(0.5)
    return state


def ok_table(results: Path, n: int, epochs: int) -> pd.DataFrame:
    table = pd.read_csv(results / "trials.csv")
    assert len(table) == n and set(table.status) == {"OK"}, table
    assert set(table.epoch) == {epochs}, table
    best = json.loads((results / "best.json").read_text())
    assert best["metrics"]["test_mse_x"] == pytest.approx(table.test_mse_x.min())
    return table


def no_ray_left(job: str) -> None:
    """The job's Ray temp dirs are gone (each node stopped and cleaned up)."""
    assert not list(Path("/tmp").glob(f"r{job}.*")), list(Path("/tmp").glob(f"r{job}.*"))


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_sweep_sh_smoke_on_two_nodes(slurm_cluster, smoke_data, tmp_path):
    """The README's smoke sweep through sbatch: head on n1, worker on n2, 2 trials of 1 epoch."""
    tokens, results = tmp_path / "tokens", tmp_path / "results"
    env = dict(os.environ, RAY_TOKEN_DIR=str(tokens), RESULTS_DIR=str(results))
    proc = subprocess.run(["sbatch", "--parsable", "--oversubscribe", "--time=5", "--nodes=2",
                           "--output=sweep.out", str(ROOT / "slurm/sweep.sh"), "name=smoke",
                           f"data.dir={smoke_data}", *SMOKE],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job.isdigit(), proc.stderr
    state = wait_job(job)
    log = (tmp_path / "sweep.out").read_text()
    assert state == "COMPLETED", log[-4000:]
    assert "ray: all 2 node(s) joined" in log and "driver exited with status 0" in log, log[-3000:]
    ok_table(results / "smoke", n=2, epochs=1)
    assert list(tokens.iterdir()) == []      # the per-job token is removed at the end
    no_ray_left(job)

    # What sweep.sh decides on a requeue: resume only a sweep whose Tune state exists.
    check = subprocess.run([sys.executable, "-m", "sweeps.submitit_launcher", "--can-resume",
                            f"results_dir={results}", "name=smoke"], capture_output=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert submitit_launcher._main(["--can-resume", f"results_dir={results}", "name=never_started"]) == 1


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_submitit_launcher_on_two_nodes_returns_best_trial(slurm_cluster, smoke_data, tmp_path, capsys):
    """`invattn sweep launcher=submitit` submits to the real SLURM and prints the best trial
    that the job returned (job.result(), although the state is UNKNOWN without sacct)."""
    folder, results = tmp_path / "submitit", tmp_path / "results"
    rc = cli(["sweep", "launcher=submitit", "name=smoke", f"results_dir={results}", f"data.dir={smoke_data}",
              f"submitit.folder={folder}", "submitit.nodes=2", "submitit.timeout_min=5",
              "submitit.additional={oversubscribe: true}", *SMOKE])
    out = capsys.readouterr().out
    assert rc == 0, out
    job = out.split("submitted SLURM job ", 1)[1].split(":", 1)[0]
    table = ok_table(results / "smoke", n=2, epochs=1)
    best = json.loads((results / "smoke" / "best.json").read_text())
    assert f"lr={best['params']['lr']}" in out and f"test_mse_x={best['metrics']['test_mse_x']:.4g}" in out
    # Where to look: logs, dashboard through an ssh tunnel, the token.
    assert f"{folder}/{job}_0_log.out" in out and "ssh -N -L 8265:127.0.0.1:" in out
    assert "ray get-auth-token" in out
    head, worker = ((folder / f"{job}_{i}_log.out").read_text() for i in (0, 1))
    assert "Ray head on n1" in head and "ray: all 2 node(s) joined" in head, head[-3000:]
    assert "Ray worker on n2" in worker and "ray worker stopped" in worker, worker[-3000:]
    assert "ray head stopped" in head
    assert sorted(table.lr) == [1e-3, 3e-3]
    assert list((folder / "tokens").iterdir()) == []   # the launch's token is removed at the end
    no_ray_left(job)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_submitit_job_requeued_on_time_limit_resumes_the_sweep(slurm_cluster, smoke_data, tmp_path):
    """The time-limit signal (USR2, what SLURM sends signal_delay_s before the limit) makes the
    job checkpoint and requeue itself; the requeued job resumes the sweep from Tune's state."""
    results, folder = tmp_path / "results", tmp_path / "submitit"
    sweep_cfg, train_cfg = load_sweep_configs(
        ["launcher=submitit", "name=rq", f"results_dir={results}", f"data.dir={smoke_data}",
         f"submitit.folder={folder}", "submitit.nodes=1", "submitit.timeout_min=5",
         "submitit.additional={oversubscribe: true}", *SMOKE, "train.epochs=20"])
    job, token = submitit_launcher.submit(sweep_cfg, train_cfg)
    exp = submitit_launcher.experiment_path(sweep_cfg)
    deadline = time.monotonic() + 150
    while not list(exp.glob("*/checkpoint_*")):            # a trial has saved its first epoch
        assert time.monotonic() < deadline and job_state(job.job_id)[0] not in TERMINAL, \
            (folder / f"{job.job_id}_0_log.out").read_text()[-3000:]
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=60)
    # SLURM holds a requeued job for two minutes (BeginTime); release it now.
    deadline = time.monotonic() + 60
    while "BeginTime" not in subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%r"],
                                            capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], check=True, timeout=60)
    best = job.task(0).result()     # waits on the result file; sacct is not needed
    log = (folder / f"{job.job_id}_0_log.out").read_text()
    assert "Requeued job" in log and "requeued job: resuming the sweep" in log, log[-4000:]
    assert "resuming sweep from" in log
    table = ok_table(results / "rq", n=2, epochs=20)
    assert best["metrics"]["test_mse_x"] == pytest.approx(table.test_mse_x.min())
    # The interrupted trial went on in the requeued job from its last saved checkpoint, not
    # from scratch (Tune's result log of a trial: one row per epoch, from each process).
    runs = [[(r["epoch"], r["pid"]) for r in map(json.loads, p.read_text().splitlines())]
            for p in exp.glob("*/result.json")]
    resumed = [rows for rows in runs if len({pid for _, pid in rows}) == 2]
    assert len(resumed) == 1, runs
    first_pid = resumed[0][0][1]
    before = [e for e, pid in resumed[0] if pid == first_pid]
    after = [e for e, pid in resumed[0] if pid != first_pid]
    assert before == list(range(1, len(before) + 1)) and after == list(range(after[0], 21)), resumed
    assert 1 < after[0] <= before[-1] + 1, resumed
    assert not token.exists()
    no_ray_left(job.job_id)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_submitit_launcher_runs_locally_without_slurm(smoke_data, tmp_path, capsys, monkeypatch):
    """No sbatch: the same job runs on this machine through submitit's local executor."""
    monkeypatch.setattr(submitit_launcher, "_on_slurm", lambda: False)
    folder, results = tmp_path / "submitit", tmp_path / "results"
    rc = cli(["sweep", "launcher=submitit", "name=local", f"results_dir={results}", f"data.dir={smoke_data}",
              f"submitit.folder={folder}", "submitit.cpus_per_node=1", *SMOKE, "search.lr=[1e-3]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "no SLURM here" in out and "submitted local job" in out and "best trial" in out
    ok_table(results / "local", n=1, epochs=1)
    assert list((folder / "tokens").iterdir()) == []


def test_launcher_refuses_bad_settings_before_submitting(smoke_data, tmp_path, capsys):
    """Clear errors, and nothing submitted, for settings the job could never run with."""
    base = ["sweep", "launcher=submitit", f"results_dir={tmp_path}", f"submitit.folder={tmp_path / 'sub'}",
            "submitit.cpus_per_node=1"]
    assert cli([*base, f"data.dir={smoke_data}", "resources.cpus_per_trial=2"]) == 2
    assert "resources.cpus_per_trial=2 exceeds submitit.cpus_per_node=1" in capsys.readouterr().err
    assert cli([*base, f"data.dir={tmp_path / 'missing'}"]) == 2
    assert "data.dir=" in capsys.readouterr().err
    assert cli([*base, f"data.dir={smoke_data}", "resume=true"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert cli([*base, f"data.dir={smoke_data}", "ray.address=127.0.0.1:6379"]) == 2
    assert "ray.address must stay null" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()
