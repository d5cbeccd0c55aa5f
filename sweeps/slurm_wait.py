"""Wait on a SLURM job without ever waiting forever.

Used by the submitit launcher and by the ``slurm`` tests.  Works without accounting (the dev
cluster has no slurmdbd, so ``sacct`` fails): a job's state comes from ``scontrol show job``
(which knows a finished job for ``MinJobAge``), then ``squeue``, then ``sacct``.

A job that ended (or left the queue) without the result its caller waits for, or that SLURM
will never start again by itself (``launch failed requeued held``), raises
:class:`SlurmJobError` at once, with one line that names the job, its state and the tail of its
log.  An overall timeout is only the last resort.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["TERMINAL", "JobStatus", "SlurmJobError", "job_status", "log_tail", "wait_job"]

# States after which the job does not run again by itself.  (PREEMPTED is not among them: a
# requeue-able job goes on; a job that is not requeue-able ends CANCELLED or similar.)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                      "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})
# Reasons of a pending job that only an administrator can start again.
HELD_FOR_GOOD = frozenset({"launch_failed_requeued_held"})


class SlurmJobError(RuntimeError):
    """A SLURM job ended, vanished, or was held without producing what its caller waits for.
    ``str()`` is one line: job id, state, and the tail of the job's log."""

    def __init__(self, message: str, status: "JobStatus | None" = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JobStatus:
    """What SLURM says about one job (``scontrol show job`` fields)."""
    job_id: str
    state: str                 # JobState, e.g. RUNNING, COMPLETED, "PENDING"
    reason: str = ""           # Reason, e.g. BeginTime, launch_failed_requeued_held
    exit_code: str = ""        # ExitCode "status:signal"
    nodes: str = ""            # NodeList
    restarts: int = 0          # Restarts (requeues)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def held_for_good(self) -> bool:
        return self.state == "PENDING" and self.reason in HELD_FOR_GOOD

    @property
    def exit_status(self) -> int:
        """The job's exit status (0 for COMPLETED; 128 + signal for a killed one; 1 if unknown)."""
        if self.state == "COMPLETED":
            return 0
        try:
            code, sig = (int(x) for x in self.exit_code.split(":"))
        except ValueError:
            return 1
        return code or (128 + sig if sig else 1)

    def describe(self) -> str:
        """``STATE (reason R, exit C)``, leaving out what does not apply."""
        more = []
        if self.reason not in ("", "None"):
            more.append(f"reason {self.reason}")
        if self.exit_code and self.state in TERMINAL:
            more.append(f"exit {self.exit_code}")
        return self.state + (f" ({', '.join(more)})" if more else "")


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _fields(line: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def job_status(job_id: str) -> JobStatus | None:
    """The job's status, or None when SLURM no longer knows it (or never did).

    For an array job without a task index, the status of a task that is still going (or else
    of a failed task, or else of the first one).
    """
    job_id = str(job_id)
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        tasks = [_fields(line) for line in proc.stdout.splitlines() if "JobState=" in line]
        if tasks:
            pick = (next((t for t in tasks if t["JobState"] not in TERMINAL), None)
                    or next((t for t in tasks if t["JobState"] != "COMPLETED"), tasks[0]))
            return JobStatus(job_id, pick["JobState"], pick.get("Reason", ""), pick.get("ExitCode", ""),
                             pick.get("NodeList", "") if pick.get("NodeList") != "(null)" else "",
                             int(pick.get("Restarts", 0) or 0))
    proc = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%N"])
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        state, reason, nodes = (proc.stdout.splitlines()[0].split("|") + ["", ""])[:3]
        return JobStatus(job_id, state.strip(), reason.strip(), "", nodes.strip())
    # With accounting, sacct still knows a job long gone from the controller.
    proc = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,NodeList"])
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        state, code, nodes = (proc.stdout.splitlines()[0].split("|") + ["", ""])[:3]
        return JobStatus(job_id, state.split()[0] if state.strip() else "", "", code, nodes)
    return None


def log_tail(logs: Iterable[Path | str], lines: int = 6, width: int = 200) -> str:
    """The last ``lines`` non-empty lines of each existing log, as one line (`` | `` between lines)."""
    parts = []
    for path in map(Path, logs):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            parts.append(f"{path}: (no log)")
            continue
        tail = [ln.strip()[:width] for ln in text.splitlines() if ln.strip()][-lines:]
        parts.append(f"{path}: " + (" | ".join(tail) if tail else "(empty)"))
    return "; ".join(parts) if parts else "(no log given)"


def wait_job(job_id: str, *, done: Callable[[], bool] | None = None, logs: Iterable[Path | str] = (),
             timeout: float | None = 600, count_pending: bool = True, poll: float = 1.0,
             result_grace: float = 10.0,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus | None:
    """Block until the job is over, or (with ``done``) until ``done()`` is true.

    Parameters
    ----------
    job_id : str
        SLURM job id (``123``, or ``123_4`` for one task of an array).
    done : callable, optional
        What the caller waits for (e.g. "the result file exists").  Without it, the wait ends
        when the job reaches a terminal state, whatever that state is.
    logs : paths
        The job's stdout / stderr files, whose tails go into the error message.
    timeout : float or None
        Last-resort limit in seconds (None: none).  With ``count_pending=False`` only the time
        the job spends out of PENDING counts (a busy queue is not a fault).
    poll : float
        Seconds between two checks of ``done``; SLURM is asked at most once a second.
    result_grace : float
        Seconds to still wait for ``done()`` after the job COMPLETED or left the queue (result
        files may show up late on a shared filesystem).  A failed or cancelled job gets none.
    on_status : callable, optional
        Called with each status read from SLURM (e.g. to print where the job runs).

    Returns
    -------
    The last :class:`JobStatus` (None if SLURM had already forgotten the job when ``done()``
    became true).

    Raises
    ------
    SlurmJobError
        With ``done``: the job ended or left the queue with ``done()`` still false.  Without it:
        the job left the queue with no known end state.  Either way: the job is held after a
        failed launch, or ``timeout`` passed.
    """
    job_id, logs = str(job_id), list(logs)
    start = time.monotonic()
    asked, counted, status, over_since = None, 0.0, None, None
    while True:
        if done is not None and done():
            return status
        now = time.monotonic()
        if asked is None or now - asked >= max(poll, 1.0) or over_since is not None:
            if asked is not None and (count_pending or status is None or status.state != "PENDING"):
                counted += now - asked
            asked, status = now, job_status(job_id)
            if on_status is not None and status is not None:
                on_status(status)
            if status is None or status.terminal:
                if done is None and status is not None:
                    return status
                over_since = over_since if over_since is not None else now
                may_lag = done is not None and (status is None or status.state == "COMPLETED")
                if not may_lag or now - over_since >= result_grace:
                    what = "left the queue" if status is None else f"ended {status.describe()}"
                    raise SlurmJobError(f"SLURM job {job_id} {what}"
                                        + (" without a result" if done is not None else "")
                                        + f"; log tail: {log_tail(logs)}", status)
            elif status.held_for_good:
                raise SlurmJobError(f"SLURM job {job_id} is {status.describe()} and will not start "
                                    f"again by itself (scancel {job_id}); log tail: {log_tail(logs)}",
                                    status)
            if timeout is not None and counted > timeout:
                raise SlurmJobError(f"SLURM job {job_id} still {status.describe() if status else 'unknown'} "
                                    f"after {now - start:.0f} s (last-resort timeout {timeout:.0f} s"
                                    f"{'' if count_pending else ' out of PENDING'}); "
                                    f"log tail: {log_tail(logs)}", status)
        time.sleep(poll)
