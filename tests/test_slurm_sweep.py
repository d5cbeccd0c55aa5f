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
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from invattn.cli import main as cli
from invattn.sweeps import slurm_wait, submitit_launcher
from invattn.sweeps.cli import can_resume_main, load_sweep_configs
from invattn.sweeps.layout import SweepLayout

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["train_preset=demo", "search.lr=[1e-3,3e-3]", "train.epochs=1", "train.tensorboard=false",
         "verbose=0"]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke dataset of the README: `invattn simulate preset=demo n_train=64 n_test=16`."""
    out = tmp_path_factory.mktemp("nbody_smoke")
    assert cli(["simulate", "preset=demo", "n_train=64", "n_test=16", f"out={out}", "progress=false"]) == 0
    return out


def wait_job(job: str, log: Path, timeout: float = 240) -> str:
    """Like ``sbatch --wait`` but polling every second; returns the final JobState.  A job that
    leaves the queue, or is held for good, fails at once with the tail of ``log``."""
    return slurm_wait.wait_job(job, logs=[log], timeout=timeout).state


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
    state = wait_job(job, tmp_path / "sweep.out")
    log = (tmp_path / "sweep.out").read_text()
    assert state == "COMPLETED", log[-4000:]
    assert "ray: all 2 node(s) joined" in log and "driver exited with status 0" in log, log[-3000:]
    ok_table(results / "smoke", n=2, epochs=1)
    assert list(tokens.iterdir()) == []      # the per-job token is removed at the end
    no_ray_left(job)

    # What sweep.sh decides on a requeue: resume only a sweep whose Tune state exists.
    check = subprocess.run([sys.executable, "-m", "invattn.sweeps.cli", "--can-resume",
                            f"results_dir={results}", "name=smoke"], capture_output=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert can_resume_main(["--can-resume", f"results_dir={results}", "name=never_started"]) == 1


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
@pytest.mark.timeout(450)
def test_submitit_job_requeued_on_time_limit_resumes_the_sweep(slurm_cluster, smoke_data, tmp_path):
    """The time-limit signal (USR2, what SLURM sends signal_delay_s before the limit) makes the
    job checkpoint and requeue itself; the requeued job resumes the sweep from Tune's state."""
    results, folder = tmp_path / "results", tmp_path / "submitit"
    sweep_cfg, train_cfg = load_sweep_configs(
        ["launcher=submitit", "name=rq", f"results_dir={results}", f"data.dir={smoke_data}",
         f"submitit.folder={folder}", "submitit.nodes=1", "submitit.timeout_min=5",
         "submitit.additional={oversubscribe: true}", *SMOKE, "train.epochs=20"])
    job, token = submitit_launcher.submit(sweep_cfg, train_cfg)
    exp = SweepLayout.of(sweep_cfg).experiment
    logs = [folder / f"{job.job_id}_0_log.err", folder / f"{job.job_id}_0_log.out"]
    # Until a trial has saved its first epoch; a job that ends first fails here at once.
    slurm_wait.wait_job(job.job_id, done=lambda: bool(list(exp.glob("*/checkpoint_*"))), logs=logs,
                        poll=0.3, timeout=150)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=60)
    # The job checkpoints and requeues itself; SLURM holds it until the old run's credential
    # revocation expires (cred_expire=15 on the dev cluster), then starts it again.  Releasing
    # it earlier (StartTime=now) raced that revocation and killed the new run (issue 16).
    best = submitit_launcher.wait_result(job, timeout=300)   # fails at once if the job dies
    log = (folder / f"{job.job_id}_0_log.out").read_text()
    # (Not submitit's "Requeued job": it logs that after `scontrol requeue`, racing the kill.)
    assert "stopping Ray and requeueing" in log and "requeued job: resuming the sweep" in log, log[-4000:]
    assert "resuming sweep from" in log
    assert slurm_wait.job_status(job.job_id).restarts == 1
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


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_wait_result_fails_at_once_when_the_job_dies_without_a_result(slurm_cluster, tmp_path):
    """A submitit job killed before it writes its result (here it exits at once, as an
    out-of-memory kill or a failed launch would end it) ends the launcher's wait at once, in
    one line with the job id, its state and its log tail -- not at a timeout (issue 16)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(time=5, nodes=1, ntasks_per_node=1, cpus_per_task=1,
                               additional_parameters={"oversubscribe": True})
    job = executor.submit(os._exit, 7)
    with pytest.raises(slurm_wait.SlurmJobError) as failed:
        submitit_launcher.wait_result(job, timeout=200)
    msg = str(failed.value)
    assert "\n" not in msg and "last-resort" not in msg, msg
    assert re.search(rf"^SLURM job {job.job_id} ended FAILED \(.*exit 7:0\) without a result; log tail: ", msg), msg
    assert f"{job.job_id}_0_log.err: " in msg and "Loading pickle" in msg, msg


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
