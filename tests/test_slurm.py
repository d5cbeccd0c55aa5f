"""The real SLURM development cluster (slurm/dev-cluster.sh) and Ray on a 2-node allocation.

Needs a running controller: `bash slurm/dev-cluster.sh up` (as root; .ci/run does it).
Jobs ask for --oversubscribe so that they never wait behind a teammate's job on the
dev cluster's two one-CPU nodes, and for a short --time so that nothing lingers.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from invattn.sweeps.slurm_wait import SlurmJobError, job_status, wait_job as wait_slurm_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
JOB = ["--oversubscribe", "--time=5"]
USABLE = {"idle", "mixed", "allocated", "completing"}


def wait_job(job: str, logs: list[Path] = (), timeout: float = 240) -> int:
    """Wait for ``job`` and return its exit status, like ``sbatch --wait`` but polling every
    second (sbatch --wait backs off to half a minute between polls); a job that leaves the queue
    or is held for good fails the test at once with its log tail."""
    return wait_slurm_job(job, logs=logs, timeout=timeout).exit_status


def sbatch_wait(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240):
    """Submit a job and wait for it: returns (job id, exit status of the job)."""
    proc = subprocess.run(["sbatch", "--parsable", *JOB, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job.isdigit(), f"sbatch failed: {proc.stdout!r} {proc.stderr!r}"
    logs = [cwd / a.split("=", 1)[1] for a in args if a.startswith(("--output=", "--error="))]
    return job, wait_job(job, logs, timeout)


def test_dev_cluster_has_two_usable_one_cpu_nodes(slurm_cluster):
    assert sorted(slurm_cluster) == ["n1", "n2"], slurm_cluster
    # '*' would mark a node whose slurmd does not answer; drained/down nodes are unusable.
    assert set(slurm_cluster.values()) <= USABLE, slurm_cluster
    cpus = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert dict(zip(cpus[::2], cpus[1::2])) == {"n1": "1", "n2": "1"}
    status = subprocess.run(["bash", str(ROOT / "slurm/dev-cluster.sh"), "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "slurmd -N n2: up" in status.stdout


def test_dev_cluster_up_again_changes_nothing(slurm_cluster):
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if os.geteuid() != 0 or "invattn-dev-cluster" not in conf.read_text():
        pytest.skip("not root, or this SLURM is not the dev cluster of slurm/dev-cluster.sh")
    pidfiles = [Path("/run/slurmctld.pid"), Path("/run/slurmd-n1.pid"), Path("/run/slurmd-n2.pid"),
                Path("/run/munge/munged.pid")]
    before = (conf.stat().st_mtime_ns, [p.read_text() for p in pidfiles])
    t0 = time.monotonic()
    up = subprocess.run(["bash", str(ROOT / "slurm/dev-cluster.sh"), "up"], capture_output=True,
                        text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert up.returncode == 0, up.stdout + up.stderr
    assert "starting" not in up.stdout and "wrote" not in up.stdout, up.stdout
    assert (conf.stat().st_mtime_ns, [p.read_text() for p in pidfiles]) == before
    assert elapsed < 10, f"a no-op `up` took {elapsed:.1f} s"


@pytest.mark.parametrize("args", [
    ["slurm/sweep.sh"],
    ["slurm/ray_smoke.sh"],
    ["--array=0-3", "slurm/simulate.sh", "OUT"],
    ["slurm/simulate_merge.sh", "OUT", "n_shards=4"],
    ["--cpus-per-task=1", "slurm/preprocess_qm9.sh"],   # the dev nodes have one CPU each
], ids=lambda a: next(x for x in a if x.startswith("slurm/")))
def test_sbatch_headers_are_accepted_by_slurm(slurm_cluster, tmp_path, args):
    """Every #SBATCH line of our scripts parses and the job fits the dev cluster (--test-only)."""
    args = [str(ROOT / a) if a.startswith("slurm/") else a.replace("OUT", str(tmp_path)) for a in args]
    proc = subprocess.run(["sbatch", "--test-only", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


def test_sbatch_wait_runs_a_job_and_reports_its_exit_status(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho \"$SLURM_JOB_ID $SLURMD_NODENAME\" > result.txt\n")
    job, rc = sbatch_wait("--output=job.out", str(script), cwd=tmp_path)
    assert rc == 0, (tmp_path / "job.out").read_text()
    ran_job, node = (tmp_path / "result.txt").read_text().split()
    assert ran_job == job and node in ("n1", "n2")
    # A failing job's own exit status comes back.
    _, rc = sbatch_wait("--output=fail.out", "--wrap", "exit 3", cwd=tmp_path)
    assert rc == 3


def test_two_node_job_gets_one_task_on_each_node(slurm_cluster, tmp_path):
    job, rc = sbatch_wait("--nodes=2", "--ntasks-per-node=1", "--output=two.out", "--wrap",
                          'srun bash -c "echo \\$SLURM_PROCID \\$SLURMD_NODENAME \\$SLURM_JOB_NUM_NODES"',
                          cwd=tmp_path)
    out = (tmp_path / "two.out").read_text()
    assert rc == 0, out
    tasks = sorted(tuple(line.split()) for line in out.splitlines() if line.strip())
    assert tasks == [("0", "n1", "2"), ("1", "n2", "2")], out


def test_requeued_job_starts_again_by_itself_after_a_short_hold(slurm_cluster, tmp_path):
    """SLURM holds a requeued job until the old run's credential revocation has expired
    (releasing it earlier races the revocation: "Job credential revoked" at launch, issue 16).
    The dev cluster makes that hold short (AuthInfo=cred_expire=15), so nobody needs to release
    the job: it runs again by itself within a backfill pass or so of the hold."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    authinfo = next(line for line in config.splitlines() if line.startswith("AuthInfo"))
    assert "cred_expire=15" in authinfo, authinfo
    proc = subprocess.run(["sbatch", "--parsable", *JOB, "--requeue", "--output=rq.out", "--wrap",
                           'echo "run ${SLURM_RESTART_COUNT:-0}"; [ "${SLURM_RESTART_COUNT:-0}" = 1 ] || sleep 240'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job.isdigit(), proc.stderr
    log = tmp_path / "rq.out"
    deadline = time.monotonic() + 120
    while "run 0" not in (log.read_text() if log.exists() else ""):
        status = job_status(job)
        assert status and not status.terminal and time.monotonic() < deadline, (status, log)
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    requeued_at = time.monotonic()
    while True:
        status = job_status(job)
        if status and status.restarts >= 1 and status.state == "PENDING":
            break
        assert status and time.monotonic() - requeued_at < 60, status
        time.sleep(0.2)
    info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                          timeout=60).stdout
    held = dict(f.split("=", 1) for f in info.split() if "=" in f)
    # The hold ends cred_expire + 1 s after the requeue (not 121 s as with Slurm's default).
    hold_s = datetime.fromisoformat(held["EligibleTime"]).timestamp() - time.time()
    assert held["Reason"] == "BeginTime" and hold_s <= 17, held
    final = wait_slurm_job(job, logs=[log], timeout=150)
    assert final.state == "COMPLETED" and final.restarts == 1, final
    assert log.read_text().split()[-2:] == ["run", "1"], log.read_text()


def test_wait_fails_at_once_for_a_job_that_ends_without_its_result(slurm_cluster, tmp_path):
    """A job that fails, or is cancelled, before writing what the caller waits for ends the wait
    with one line: job id, state, exit code and the end of the job's logs (issue 16: such a
    wait used to last until the test's own timeout)."""
    result = tmp_path / "result.txt"
    proc = subprocess.run(["sbatch", "--parsable", *JOB, "--output=fail.out", "--error=fail.err", "--wrap",
                           "echo computing; echo 'no input here' >&2; exit 3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip()
    assert proc.returncode == 0 and job.isdigit(), proc.stderr
    with pytest.raises(SlurmJobError) as failed:
        wait_slurm_job(job, done=result.exists, logs=[tmp_path / "fail.err", tmp_path / "fail.out"],
                       timeout=200)
    msg = str(failed.value)
    assert "\n" not in msg and "last-resort" not in msg, msg
    assert f"SLURM job {job} ended FAILED" in msg and "exit 3:0" in msg, msg
    assert "no input here" in msg and "computing" in msg, msg
    assert failed.value.status.exit_status == 3

    proc = subprocess.run(["sbatch", "--parsable", *JOB, "--output=long.out", "--wrap", "sleep 240"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip()
    subprocess.run(["scancel", job], check=True, timeout=60)
    with pytest.raises(SlurmJobError, match=f"SLURM job {job} ended CANCELLED.* without a result"):
        wait_slurm_job(job, done=result.exists, logs=[tmp_path / "long.out"], timeout=200)
    # A job SLURM does not know (any more): gone, so no result will come.
    with pytest.raises(SlurmJobError, match="SLURM job 99999999 left the queue"):
        wait_slurm_job("99999999", timeout=200)


@pytest.mark.slow
def test_ray_head_on_first_node_and_worker_on_second(slurm_cluster, tmp_path):
    """slurm/ray_smoke.sh builds the Ray cluster exactly as slurm/sweep.sh does."""
    tokens = tmp_path / "tokens"
    env = dict(os.environ, RAY_TOKEN_DIR=str(tokens))
    job, rc = sbatch_wait("--nodes=2", "--output=ray.out", str(ROOT / "slurm/ray_smoke.sh"),
                          cwd=tmp_path, env=env)
    out = (tmp_path / "ray.out").read_text()
    assert rc == 0, out[-4000:]
    summary = json.loads(next(ln for ln in reversed(out.splitlines()) if ln.startswith("{")))
    assert summary["alive_nodes"] == 2
    assert summary["slurm_nodes"] == {"n1": "head", "n2": "worker"}
    assert sorted(n["head"] for n in summary["nodes"]) == [False, True]
    # Token auth is really on: the job's token is accepted, another one refused.
    assert summary["auth_mode"] == "token"
    assert summary["accepts_job_token"] and summary["rejects_wrong_token"], summary
    # Distinct ports for the two Ray nodes sharing this host.
    assert len({n["port"] for n in summary["nodes"]}) == 2
    # Tear-down: both nodes stopped cleanly, token and stop file removed, temp dirs gone.
    assert "ray head on n1 stopped" in out and "ray worker on n2 stopped" in out, out[-3000:]
    assert "nodes still up" not in out
    assert oct(tokens.stat().st_mode & 0o777) == "0o700" and list(tokens.iterdir()) == []
    assert not list(Path("/tmp").glob(f"r{job}.*"))


def test_preprocess_qm9_job_runs_dask_sized_to_the_allocation(slurm_cluster, tmp_path):
    """slurm/preprocess_qm9.sh on the real QM9 sample: one Dask worker per allocated CPU."""
    csv = ROOT / "tests/data/qm9/qm9pack_sample_500.csv"
    out = tmp_path / "qm9"
    job, rc = sbatch_wait("--cpus-per-task=1", "--output=qm9.out", str(ROOT / "slurm/preprocess_qm9.sh"),
                          f"source={csv}", f"out={out}", "shard_size=100", cwd=tmp_path)
    log = (tmp_path / "qm9.out").read_text()
    assert rc == 0, log[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["cluster"] == "local"
    assert manifest["config"]["local"]["n_workers"] == 1      # = SLURM_CPUS_PER_TASK
    assert manifest["status"] == "complete"
    assert manifest["counts"]["found"] == manifest["counts"]["written"] == 500
    assert len(list(out.glob("shard_*.h5"))) == 5
