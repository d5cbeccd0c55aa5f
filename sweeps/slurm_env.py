"""The SLURM environment of one task of a sweep job: where it runs and what it was given.

Read by :mod:`sweeps.ray_node` (CPUs and GPUs for ``ray start``) and :mod:`sweeps.sweep_job`
(node address, preemption signal).  Every value falls back to something sensible on a machine
without SLURM (submitit's local executor).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

__all__ = ["log", "node_ip", "preemption_signal", "node_gpus", "node_cpus"]


def log(msg: str) -> None:
    # os.write, not print: this also runs in signal handlers, where print may be re-entered.
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    os.write(sys.stdout.fileno(), f"[{time.strftime('%H:%M:%S')} {node}] {msg}\n".encode())


def node_ip(node: str) -> str:
    """An IPv4 address at which other nodes reach SLURM node ``node`` (its NodeAddr)."""
    addr = node
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True,
                             text=True, timeout=60).stdout
        found = re.search(r"\bNodeAddr=(\S+)", out)
        addr = found.group(1) if found else node
    if re.fullmatch(r"\d+(\.\d+){3}", addr):
        return addr
    try:
        ips = [info[4][0] for info in socket.getaddrinfo(addr, None, socket.AF_INET)]
    except socket.gaierror as exc:
        raise RuntimeError(f"cannot resolve node {node} (NodeAddr={addr}): {exc}") from exc
    # 127.0.1.1 (Debian's entry for the machine's own name) is not reachable from elsewhere.
    return next((ip for ip in ips if not ip.startswith("127.")), ips[0])


def preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (USR2 unless changed)."""
    import submitit

    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def node_gpus() -> int:
    """GPUs SLURM (or the local executor) gave this task; 0 when none."""
    if os.environ.get("SLURM_GPUS_ON_NODE"):
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles":
        return len([d for d in visible.split(",") if d.strip()])
    return 0


def node_cpus() -> int:
    """CPUs SLURM gave this task (its allocation, not the whole host)."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var):
            return int(os.environ[var])
    return len(os.sched_getaffinity(0))
