"""``invattn sweep launcher=submitit``: submit the SLURM sweep job of ``slurm/sweep.sh`` from Python.

The launcher checks the settings, writes one random Ray token per launch (mode 600, in
``submitit.folder/tokens/``), submits one job (``submitit.*`` keys of ``configs/sweep.yaml``)
with one task per node running :class:`sweeps.sweep_job.SweepJob`, and (``submitit.wait=true``)
waits for rank 0's best-trial record.  The batch script exports ``SRUN_CPUS_PER_TASK``
(Slurm >= 22.05 no longer passes ``--cpus-per-task`` on to ``srun``).  Without SLURM (no
``sbatch`` on PATH) the same job runs on this machine through submitit's local executor.

Without accounting (``sacct`` fails) submitit reports the state UNKNOWN and its own wait cannot
tell a dead job from a running one; :func:`wait_result` waits on the result files and asks
``scontrol`` / ``squeue`` (:mod:`sweeps.slurm_wait`), so results still come back and a job that
ended without them fails at once with its log tail.

Roles: :mod:`sweeps.layout` (where the sweep's files go), :mod:`sweeps.slurm_env` (the task's
SLURM environment), :mod:`sweeps.ray_node` (one Ray node), :mod:`sweeps.sweep_job` (the job in
its allocation), this module (submission and waiting).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from invattn.sweeps.layout import SweepLayout
from invattn.sweeps.ray_node import dashboard_port, port_base
from invattn.sweeps.slurm_wait import JobStatus, SlurmJobError, log_tail, wait_job
from invattn.sweeps.sweep_job import SweepJob

__all__ = ["launch", "submit", "wait_result"]


def _absolute(sweep_cfg: DictConfig, train_cfg: DictConfig) -> tuple[DictConfig, DictConfig]:
    """Copies with every path made absolute: the job may start in another directory."""
    sweep_cfg, train_cfg = sweep_cfg.copy(), train_cfg.copy()
    sweep_cfg.results_dir = str(Path(sweep_cfg.results_dir).resolve())
    if sweep_cfg.storage_path:
        sweep_cfg.storage_path = str(Path(sweep_cfg.storage_path).resolve())
    train_cfg.data.dir = str(Path(train_cfg.data.dir).resolve())
    return sweep_cfg, train_cfg


def _on_slurm() -> bool:
    """Submit to SLURM when ``sbatch`` is on PATH; otherwise run the job on this machine."""
    return shutil.which("sbatch") is not None


def _partition_cpus(partition: str | None) -> int:
    """CPUs of the smallest node of ``partition`` (sinfo), or of this machine without SLURM."""
    if not _on_slurm():
        return len(os.sched_getaffinity(0))
    cmd = ["sinfo", "-h", "-o", "%c"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    cpus = [int(m.group()) for m in re.finditer(r"\d+", out.stdout)]
    if out.returncode != 0 or not cpus:
        raise ValueError(f"submitit.cpus_per_node=null: cannot read the CPUs per node of partition "
                         f"{partition or '(default)'} from sinfo ({out.stderr.strip() or 'no nodes'}); "
                         f"set submitit.cpus_per_node")
    return min(cpus)


def _validate(sweep_cfg: DictConfig, train_cfg: DictConfig, cpus: int) -> None:
    sub = sweep_cfg.submitit
    if sweep_cfg.ray.address:
        raise ValueError("ray.address must stay null with launcher=submitit: the job starts its own Ray cluster")
    if int(sub.nodes) < 1 or cpus < 1 or int(sub.gpus_per_node) < 0:
        raise ValueError(f"submitit.nodes and submitit.cpus_per_node must be >= 1 and gpus_per_node >= 0 "
                         f"(got {sub.nodes}, {cpus}, {sub.gpus_per_node})")
    if float(sweep_cfg.resources.cpus_per_trial) > cpus:
        # :g -- the typed config holds a float; name it as the user wrote it (2, not 2.0).
        raise ValueError(f"resources.cpus_per_trial={float(sweep_cfg.resources.cpus_per_trial):g} exceeds "
                         f"submitit.cpus_per_node={cpus}: no trial could ever start")
    if not Path(train_cfg.data.dir).is_dir():
        raise FileNotFoundError(f"data.dir={train_cfg.data.dir} does not exist (make it with `invattn simulate`)")
    layout = SweepLayout.of(sweep_cfg)
    resumable = layout.can_resume()
    if sweep_cfg.resume and not resumable:
        raise ValueError(f"resume=true but there is no sweep to resume at {layout.experiment}")
    if not sweep_cfg.resume and resumable:
        raise FileExistsError(f"a sweep named {sweep_cfg.name!r} already exists at {layout.experiment}; "
                              f"pass resume=true to continue it or choose another name=")


def _new_token(folder: Path) -> Path:
    """A fresh random Ray token in ``folder/tokens/`` (folder 700, file 600 from the start)."""
    tokens = folder / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = tokens / f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def submit(sweep_cfg: DictConfig, train_cfg: DictConfig):
    """Validate and submit the sweep job; return ``(job, token_path)``: the submitit ``Job``
    (SLURM, or local without ``sbatch``) and the launch's Ray token file.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError
        Bad ``submitit.*`` / ``resources.*`` settings, missing data, or a sweep that already
        exists (without ``resume=true``) or does not (with it).
    """
    import submitit

    sweep_cfg, train_cfg = _absolute(sweep_cfg, train_cfg)
    sub = sweep_cfg.submitit
    on_slurm = _on_slurm()
    cpus = int(sub.cpus_per_node) if sub.cpus_per_node is not None else _partition_cpus(sub.partition)
    _validate(sweep_cfg, train_cfg, cpus)
    folder = Path(sub.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = _new_token(folder)
    job_fn = SweepJob(OmegaConf.to_yaml(sweep_cfg), OmegaConf.to_yaml(train_cfg), str(token),
                      str(folder / "rendezvous"))
    gpus = int(sub.gpus_per_node)
    if on_slurm:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(sub.max_requeues))
        params = dict(job_name=f"invattn-sweep-{sweep_cfg.name}", time=int(sub.timeout_min),
                      nodes=int(sub.nodes), ntasks_per_node=1, cpus_per_task=cpus,
                      signal_delay_s=int(sub.signal_delay_s),
                      # Slurm >= 22.05: srun does not pass --cpus-per-task on by itself.
                      setup=["export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}"],
                      additional_parameters={"requeue": True,
                                             **OmegaConf.to_container(sub.additional or {})})
        if sub.partition:
            params["partition"] = str(sub.partition)
        if gpus:
            params["gpus_per_node"] = gpus
        executor.update_parameters(**params)
    else:
        if int(sub.nodes) > 1:
            print(f"invattn sweep: no SLURM here: running on this machine only "
                  f"(submitit.nodes={sub.nodes} ignored)", flush=True)
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=int(sub.max_requeues))
        executor.update_parameters(timeout_min=int(sub.timeout_min), nodes=1, tasks_per_node=1,
                                   gpus_per_node=gpus, signal_delay_s=int(sub.signal_delay_s))
    try:
        return executor.submit(job_fn), token
    except submitit.core.utils.FailedJobError as exc:   # sbatch refused the job
        token.unlink(missing_ok=True)
        raise ValueError(f"the job was not submitted: {str(exc).strip()}") from exc


def _time_budget_s(sub: DictConfig) -> float:
    """Last-resort bound on the time a sweep job may spend out of PENDING: every allowed run up to
    its time limit, plus 5 minutes each for starting and stopping."""
    return (int(sub.max_requeues) + 1) * (float(sub.timeout_min) * 60 + 300)


def wait_result(job, *, timeout: float | None = None, on_status=None):
    """Wait until every task of the submitted sweep ``job`` has written its result; return
    task 0's (the best-trial record of :func:`sweeps.runner.run_sweep`).

    Not ``job.result()`` alone: without accounting submitit cannot tell a dead SLURM job from a
    running one and would wait forever.  Here a job that ended or left the queue without its
    results (cancelled, failed at launch, node failure, out of memory) fails at once.

    Parameters
    ----------
    timeout : float or None
        Last resort: seconds the job may spend out of PENDING (a busy queue is no fault);
        None waits as long as SLURM keeps the job alive.
    on_status : callable, optional
        Called with each :class:`sweeps.slurm_wait.JobStatus` read from SLURM.

    Raises
    ------
    SlurmJobError
        One line: job id, state and the end of the job's stderr / stdout.
    submitit.core.utils.UncompletedJobError
        A local job (no SLURM) ended without a result.
    submitit.core.utils.FailedJobError
        The job's function raised (its traceback).
    """
    import submitit
    from submitit.core.utils import UncompletedJobError

    pickles = [job.task(i).paths.result_pickle for i in range(job.num_tasks)]
    paths = job.task(0).paths
    if isinstance(job, submitit.SlurmJob):
        wait_job(job.job_id, done=lambda: all(p.exists() for p in pickles),
                 logs=[paths.stderr, paths.stdout], timeout=timeout, count_pending=False,
                 on_status=on_status)
    else:
        while not all(p.exists() for p in pickles):
            if job.done():
                if not all(p.exists() for p in pickles):
                    raise UncompletedJobError(f"local job {job.job_id} ended without a result; log tail: "
                                              f"{log_tail([paths.stderr, paths.stdout])}")
                break
            time.sleep(1)
    return job.task(0).result()


def launch(sweep_cfg: DictConfig, train_cfg: DictConfig) -> int:
    """``invattn sweep launcher=submitit ...``: submit the sweep job, print where to watch it,
    and (``submitit.wait=true``) wait for the best-trial record.  Exit code 0 on success,
    1 if the job failed (its log is shown)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    on_slurm = _on_slurm()
    if not on_slurm:
        print("invattn sweep: no SLURM here (no `sbatch` on PATH): running the job on this machine "
              "with submitit's local executor", flush=True)
    job, token = submit(sweep_cfg, train_cfg)
    base, sub = port_base(job.job_id), sweep_cfg.submitit
    kind = "SLURM job" if on_slurm else "local job (pid)"
    task0 = job.task(0).paths
    print(f"submitted {kind} {job.job_id}: {sub.nodes if on_slurm else 1} node(s), one task each\n"
          f"  logs: {task0.stdout}\n        {task0.stderr}\n"
          f"        (task i: {job.job_id}_<i>_log.out/.err in {task0.folder}; task 0 runs the Ray head "
          f"and the sweep driver)\n"
          f"  results: {SweepLayout.of(sweep_cfg).results}", flush=True)
    if sweep_cfg.ray.dashboard:
        where = "the job's first node" if on_slurm else "this machine"
        print(f"  Ray dashboard: http://127.0.0.1:{dashboard_port(base)} on {where}"
              + (f"; from your machine: ssh -N -L 8265:127.0.0.1:{dashboard_port(base)} <first node> "
                 f"(squeue -j {job.job_id} -o %N), then open http://127.0.0.1:8265" if on_slurm else ""),
              flush=True)
    print(f"  token (the dashboard asks for it once): cat {token}   "
          f"or RAY_AUTH_TOKEN_PATH={token} ray get-auth-token", flush=True)
    if not sub.wait:
        return 0
    print(f"waiting for job {job.job_id} (Ctrl-C stops waiting, not the job"
          + (f"; cancel it with scancel {job.job_id})" if on_slurm else ")"), flush=True)
    told_nodes = False

    def show_nodes(status: JobStatus) -> None:
        nonlocal told_nodes
        if status.state == "RUNNING" and status.nodes and not told_nodes:
            told_nodes = True
            head = subprocess.run(["scontrol", "show", "hostnames", status.nodes], capture_output=True,
                                  text=True).stdout.split() or [status.nodes]
            print(f"job {job.job_id} running on {status.nodes}; Ray dashboard: "
                  f"ssh -N -L 8265:127.0.0.1:{dashboard_port(base)} {head[0]}", flush=True)

    try:
        best = wait_result(job, timeout=_time_budget_s(sub), on_status=show_nodes)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job.job_id} keeps running (logs above)", file=sys.stderr)
        return 130
    except (SlurmJobError, UncompletedJobError) as exc:
        # Over without a result (cancelled, failed launch, node failure, out of memory).
        print(f"invattn sweep: {exc}", file=sys.stderr)
        token.unlink(missing_ok=True)   # the job is over; a cancelled job does not clean up
        return 1
    except FailedJobError as exc:
        print(f"invattn sweep: job {job.job_id} failed:\n{exc}", file=sys.stderr)
        return 1
    metrics = " ".join(f"{k}={best['metrics'][k]:.4g}" for k in sweep_cfg.report_metrics
                       if isinstance(best["metrics"].get(k), (int, float)))
    print(f"best trial ({best['metric']}, {best['mode']}): lr={best['params'].get('lr')} "
          f"subdeterminants={best['params'].get('subdeterminants')} {metrics}\n"
          f"results: {SweepLayout.of(sweep_cfg).results}/best.json, trials.csv",
          flush=True)
    return 0
