"""One Ray node of a sweep job: ``ray start --block`` with the port layout of ``slurm/lib/ray_node.sh``.

- explicit ``--num-cpus`` (the task's CPUs) and ``--num-gpus`` (the node's GPUs), because Ray
  would otherwise count the whole host;
- a port block per node index (same layout as ``ray_node.sh``), so several Ray nodes can
  share one host (the dev cluster's two virtual nodes), and a short ``--temp-dir``
  (``/tmp/r<job>.<node>``: Ray's Unix socket paths must fit in 107 bytes);
- ``ray start --block`` stays a child of the task (SLURM's process tracking sees it), in a
  process group of its own that :meth:`RayNode.stop` kills, so no Ray daemon outlives the task;
  Ray ignores submitit's preemption signal (USR2), which only the driver handles.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import socket
import sys
import threading
import time
from pathlib import Path

from invattn.sweeps.slurm_env import log, node_cpus, node_gpus, preemption_signal

__all__ = ["RayNode", "port_base", "dashboard_port", "port_open", "wait_for", "START_TIMEOUT_S"]

# Seconds a node may take to start and join (same knob as slurm/lib/ray_cluster.sh).
START_TIMEOUT_S = float(os.environ.get("RAY_START_TIMEOUT", 180))


def port_base(job_id: str) -> int:
    """First port of the job's block (``RAY_PORT_BASE`` or 20000 + 1000 * (job id % 12)),
    as in ``slurm/lib/ray_cluster.sh``; node ``i`` uses ports base + 20 * (i % 10) + 0..8."""
    if os.environ.get("RAY_PORT_BASE"):
        return int(os.environ["RAY_PORT_BASE"])
    digits = re.match(r"\d+", str(job_id))
    return 20000 + 1000 * ((int(digits.group()) if digits else 0) % 12)


def dashboard_port(base: int) -> int:
    """The head's dashboard port in the job's block."""
    return base + 8  # head slot 0, P+8 (see ray_node.sh)


def _exited(pid: int) -> bool:
    """Has child ``pid`` exited?  Leaves it unreaped (its pid, and process group id, stay taken)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:   # already reaped elsewhere
        return True


class RayNode:
    """This task's Ray node: ``ray start --block`` (ports as in ray_node.sh), a child of the
    task in a process group of its own, so that :meth:`stop` also removes Ray daemons whose
    parent already died.  (SLURM's ``proctrack/linuxproc`` loses such orphans; they would
    keep the node's ports after a requeue.)"""

    def __init__(self, role: str, index: int, ip: str, base: int, tmp: Path, *,
                 head_address: str | None = None, dashboard: bool = False) -> None:
        self.role, self.tmp = role, tmp
        slot = index % 10
        p, wmin = base + 20 * slot, 10000 + 500 * slot
        self.ncpus, self.ngpus = node_cpus(), node_gpus()
        args = ["--block", "--disable-usage-stats", f"--node-ip-address={ip}", f"--temp-dir={tmp}",
                f"--num-cpus={self.ncpus}", f"--num-gpus={self.ngpus}",
                f"--node-manager-port={p + 1}", f"--object-manager-port={p + 2}",
                f"--dashboard-agent-grpc-port={p + 3}", f"--dashboard-agent-listen-port={p + 4}",
                f"--metrics-export-port={p + 5}", f"--runtime-env-agent-port={p + 6}",
                f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 499}"]
        if os.environ.get("RAY_OBJECT_STORE_BYTES"):
            args.append(f"--object-store-memory={os.environ['RAY_OBJECT_STORE_BYTES']}")
        if role == "head":
            # The dashboard listens on 127.0.0.1 only: reach it through an ssh tunnel.
            args += ["--head", f"--port={p}", f"--ray-client-server-port={p + 7}",
                     f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={dashboard_port(base)}"]
        else:
            args.append(f"--address={head_address}")
        self.args, self.ip, self.first_port = args, ip, p
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> "RayNode":
        # A previous run of this job (requeue) may still be shutting down on these ports.
        busy_port = self.first_port if self.role == "head" else self.first_port + 1
        if port_open(self.ip, busy_port):
            log(f"port {busy_port} is in use (a previous run of this job still stopping?); waiting")
            wait_for(f"port {busy_port} to be free", lambda: not port_open(self.ip, busy_port))
        self.tmp.mkdir(parents=True, exist_ok=True)
        log(f"ray {self.role} ({self.ip}): {self.ncpus} CPU(s), {self.ngpus} GPU(s), "
            f"ports {self.first_port}.., temp {self.tmp}")
        usr_sig = preemption_signal()

        def ignore_preemption_signal():
            # SLURM signals every process of the step; only the driver (rank 0) acts on it.
            signal.signal(usr_sig, signal.SIG_IGN)

        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", *self.args],
                                     preexec_fn=ignore_preemption_signal, start_new_session=True)
        return self

    def alive(self) -> bool:
        # Not poll(): it would reap `ray start` and free its pid for reuse before stop().
        if self.proc is None or self.proc.returncode is not None:
            return False
        return not _exited(self.proc.pid)

    def stop(self, grace: float = 40) -> None:
        """SIGTERM to ``ray start --block`` alone drains and stops the node (see ray_node.sh);
        after ``grace`` seconds, or for leftovers, SIGKILL to its whole process group."""
        with self._lock:
            if self.proc is None:
                return
            pid = self.proc.pid
            if self.proc.returncode is None:
                self.proc.terminate()
                deadline = time.monotonic() + grace
                # Wait without reaping: while `ray start` is an unreaped zombie its pid cannot
                # be reused, so the process group below is still Ray's.
                while not _exited(pid):
                    if time.monotonic() > deadline:
                        log(f"ray {self.role} still up after {grace:.0f} s; killing it")
                        break
                    time.sleep(0.2)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            status = self.proc.wait()
            self.proc = None
            for _ in range(5):   # a process that was still exiting may add a file meanwhile
                shutil.rmtree(self.tmp, ignore_errors=True)
                if not self.tmp.exists():
                    break
                time.sleep(0.5)
            log(f"ray {self.role} stopped (ray start status {status})")


def wait_for(what: str, ready, node: RayNode | None = None, timeout: float = START_TIMEOUT_S):
    """Poll ``ready()`` every 0.5 s until it returns a true value (returned), ``node`` exits
    (RuntimeError) or ``timeout`` seconds pass (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if node is not None and not node.alive():
            raise RuntimeError(f"{what}: `ray start` of the {node.role} exited; see the log above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.5)


def port_open(host: str, port: int) -> bool:
    """Does something accept TCP connections at ``host:port`` (1 s)?"""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
