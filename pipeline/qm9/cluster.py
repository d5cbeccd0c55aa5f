"""The Dask cluster of the preprocessing stage, chosen by ``cluster=`` in the config.

* ``local`` (default): an embedded ``distributed.LocalCluster``.  With worker *processes*
  (the default) a script that starts it must guard its entry point with
  ``if __name__ == "__main__":`` -- workers are spawned and re-import ``__main__``.  The
  ``invattn`` console script is guarded.  Inside a SLURM job the worker count and memory come
  from the allocation (``SLURM_CPUS_PER_TASK``, ``SLURM_MEM_PER_NODE``), not from the host.
* ``slurm``: ``dask_jobqueue.SLURMCluster`` with the ``slurm.*`` settings, scaled to
  ``slurm.jobs`` jobs.
* ``host:port`` or ``tcp://host:port``: join a running scheduler.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from omegaconf import DictConfig

__all__ = ["default_n_workers", "default_memory_limit", "make_slurm_cluster", "dask_client"]


def default_n_workers() -> int:
    """CPUs this process may use: the SLURM allocation when inside a job, else the affinity mask."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_memory_limit(n_workers: int) -> str:
    """Per-worker memory: a share of the SLURM allocation if there is one, else Dask's ``auto``."""
    if os.environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        total_mb = int(os.environ["SLURM_MEM_PER_NODE"])
    elif os.environ.get("SLURM_MEM_PER_CPU", "").isdigit():
        total_mb = int(os.environ["SLURM_MEM_PER_CPU"]) * default_n_workers()
    else:
        return "auto"
    return f"{max(256, total_mb // max(1, n_workers))}MB"


def _local(cfg: DictConfig):
    from distributed import LocalCluster

    n = int(cfg.local.n_workers) if cfg.local.n_workers else default_n_workers()
    memory = cfg.local.memory_limit
    if memory in (None, "auto"):
        memory = default_memory_limit(n)
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=int(cfg.local.threads_per_worker),
        processes=bool(cfg.local.processes), dashboard_address=str(cfg.local.dashboard_address),
        memory_limit=memory, silence_logs=logging.ERROR)
    kind = "processes" if cfg.local.processes else "threads"
    return cluster, f"LocalCluster: {n} worker {kind} x {cfg.local.threads_per_worker} thread(s)"


def make_slurm_cluster(cfg: DictConfig):
    """A ``dask_jobqueue.SLURMCluster`` from the ``slurm.*`` settings, not yet scaled (no job
    submitted); ``cluster.job_script()`` shows the ``sbatch`` script it will submit."""
    from dask_jobqueue import SLURMCluster

    s = cfg.slurm
    kwargs = dict(queue=s.queue, account=s.account, cores=int(s.cores), processes=int(s.processes),
                  memory=str(s.memory), walltime=str(s.walltime),
                  job_extra_directives=list(s.job_extra_directives or []),
                  local_directory=s.local_directory, log_directory=s.log_directory,
                  interface=s.interface, python=s.python, silence_logs="error")
    return SLURMCluster(**{k: v for k, v in kwargs.items() if v is not None})


def _slurm(cfg: DictConfig):
    s = cfg.slurm
    cluster = make_slurm_cluster(cfg)
    cluster.scale(jobs=int(s.jobs))
    return cluster, (f"SLURMCluster: {s.jobs} job(s) x {s.cores} cores, {s.memory}, walltime {s.walltime}"
                     f", queue {s.queue or '(default)'}")


def _address(cfg: DictConfig) -> str | None:
    addr = cfg.get("scheduler_address") or None
    kind = str(cfg.cluster)
    if kind not in ("local", "slurm"):
        if ":" not in kind:
            raise ValueError(f"cluster={kind!r}: use local, slurm, or a scheduler address host:port")
        addr = kind
    if addr and "://" not in addr:
        addr = f"tcp://{addr}"
    return addr


def _dashboard_link(client, cfg: DictConfig, local: bool) -> str:
    # An in-process (threads) LocalCluster reports the host's network address in
    # dashboard_link although the dashboard listens where dashboard_address says.
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if not port:
        return "(not available: install bokeh>=3.1)"
    if local:
        host = str(cfg.local.dashboard_address).rsplit(":", 1)[0] or "127.0.0.1"
        return f"http://{host}:{port}/status"
    return client.dashboard_link


@contextmanager
def dask_client(cfg: DictConfig, log=print):
    """Start (or join) the configured cluster; yield a connected ``distributed.Client``.

    Prints the dashboard link.  The cluster is closed on exit (a joined one is left running).
    """
    from distributed import Client

    address = _address(cfg)
    cluster = None
    if address:
        client = Client(address, timeout=str(cfg.get("connect_timeout_s", 30)) + "s")
        what = f"existing scheduler {address}"
    else:
        cluster, what = (_slurm if str(cfg.cluster) == "slurm" else _local)(cfg)
        client = Client(cluster)
    try:
        log(f"dask: {what}")
        log(f"dask: dashboard {_dashboard_link(client, cfg, local=cluster is not None and str(cfg.cluster) == 'local')}")
        if cluster is not None and str(cfg.cluster) == "slurm":
            log(f"dask: job script:\n{cluster.job_script()}")
            client.wait_for_workers(1, timeout=float(cfg.slurm.wait_timeout_s))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

