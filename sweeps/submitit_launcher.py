"""``invattn sweep launcher=submitit``: the SLURM sweep job of ``slurm/sweep.sh``, from Python.

The launcher submits one job (``submitit.*`` keys of ``configs/sweep.yaml``) with one task per
node.  Every task runs :class:`SweepJob`: rank 0 starts the Ray head, the other ranks start Ray
workers that join it, rank 0 runs the sweep driver in-process
(:func:`sweeps.runner.run_sweep`, ``ray.address`` = the head) and returns the best-trial record,
which comes back to the launcher as ``job.result()``.  Without SLURM (no ``sbatch`` on PATH)
the same job runs on this machine through submitit's local executor.

Cluster bring-up follows ``slurm/lib/ray_cluster.sh`` and ``ray_node.sh`` (DESIGN sections 6
and 8, "Distributed"):

- token authentication: ``RAY_AUTH_MODE=token`` and one random token per launch, written by
  the launcher (mode 600) into ``submitit.folder/tokens/`` before submission; every task
  exports it as ``RAY_AUTH_TOKEN_PATH`` before Ray starts;
- explicit ``--num-cpus`` (the task's CPUs) and ``--num-gpus`` (the node's GPUs), because Ray
  would otherwise count the whole host; the batch script exports ``SRUN_CPUS_PER_TASK``
  (Slurm >= 22.05 no longer passes ``--cpus-per-task`` on to ``srun``);
- a port block per node index (same layout as ``ray_node.sh``), so several Ray nodes can
  share one host (the dev cluster's two virtual nodes), and a short ``--temp-dir``
  (``/tmp/r<job>.<node>``: Ray's Unix socket paths must fit in 107 bytes);
- node addresses from SLURM's ``NodeAddr``, preferring a non-loopback IPv4 address (Debian
  maps the host name to 127.0.1.1, which no other host can reach);
- ``ray start --block`` stays a child of the task (SLURM's process tracking sees it), in a
  process group of its own that the task kills when it stops Ray, so no Ray daemon outlives
  the task; Ray ignores submitit's preemption signal (USR2), which only the driver handles,
  and a worker task stops its Ray node on SIGTERM (cancellation);
- rendezvous through files in the shared job folder: rank 0 writes ``head`` once the head
  answers, workers join then; at the end rank 0 writes ``done``, workers stop and write
  ``stopped.<rank>``, then the head stops (a worker drains through the head).

Time limit or preemption: SLURM sends USR2 ``signal_delay_s`` before the limit.  Rank 0 first
stops Tune as Ctrl-C would (Tune saves the experiment state; ``RAY_STOP_GRACE`` seconds at
most), then submitit calls :meth:`SweepJob.checkpoint` (stop Ray, resubmit the same job marked
as requeued) and requeues the job.  The requeued job (also one requeued by SLURM itself,
``SLURM_RESTART_COUNT > 0``) resumes the sweep (``resume=true``) when Tune had saved its state,
and starts it afresh otherwise.

Without accounting (``sacct`` fails) submitit reports the state UNKNOWN and its own wait cannot
tell a dead job from a running one; :func:`wait_result` waits on the result files and asks
``scontrol`` / ``squeue`` (:mod:`sweeps.slurm_wait`), so results still come back and a job that
ended without them fails at once with its log tail.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from submitit.helpers import Checkpointable, DelayedSubmission

from invattn.sweeps.slurm_wait import JobStatus, SlurmJobError, log_tail, wait_job

__all__ = ["launch", "submit", "wait_result", "SweepJob", "experiment_path", "can_resume", "port_base"]

# Seconds a node may take to start and join (same knob as slurm/lib/ray_cluster.sh).
START_TIMEOUT_S = float(os.environ.get("RAY_START_TIMEOUT", 180))


# ---- shared with slurm/sweep.sh --------------------------------------------------------------

def experiment_path(sweep_cfg: DictConfig) -> Path:
    """Tune's experiment directory of a sweep, as :func:`sweeps.runner.run_sweep` lays it out."""
    out_dir = Path(sweep_cfg.results_dir).resolve() / str(sweep_cfg.name)
    storage = Path(sweep_cfg.storage_path).resolve() if sweep_cfg.storage_path else out_dir / "ray"
    return storage / str(sweep_cfg.name)


def can_resume(sweep_cfg: DictConfig) -> bool:
    """True when Tune saved the state of this sweep, so ``resume=true`` can continue it."""
    from ray import tune

    path = experiment_path(sweep_cfg)
    return path.is_dir() and tune.Tuner.can_restore(str(path))


def port_base(job_id: str) -> int:
    """First port of the job's block (``RAY_PORT_BASE`` or 20000 + 1000 * (job id % 12)),
    as in ``slurm/lib/ray_cluster.sh``; node ``i`` uses ports base + 20 * (i % 10) + 0..8."""
    if os.environ.get("RAY_PORT_BASE"):
        return int(os.environ["RAY_PORT_BASE"])
    digits = re.match(r"\d+", str(job_id))
    return 20000 + 1000 * ((int(digits.group()) if digits else 0) % 12)


def _dashboard_port(base: int) -> int:
    return base + 8  # head slot 0, P+8 (see ray_node.sh)


# ---- inside the job ---------------------------------------------------------------------------

def _log(msg: str) -> None:
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


def _preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (USR2 unless changed)."""
    import submitit

    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _node_gpus() -> int:
    """GPUs SLURM (or the local executor) gave this task; 0 when none."""
    if os.environ.get("SLURM_GPUS_ON_NODE"):
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles":
        return len([d for d in visible.split(",") if d.strip()])
    return 0


def _node_cpus() -> int:
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var):
            return int(os.environ[var])
    return len(os.sched_getaffinity(0))


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
        self.ncpus, self.ngpus = _node_cpus(), _node_gpus()
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
                     f"--dashboard-port={_dashboard_port(base)}"]
        else:
            args.append(f"--address={head_address}")
        self.args, self.ip, self.first_port = args, ip, p
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> "RayNode":
        # A previous run of this job (requeue) may still be shutting down on these ports.
        busy_port = self.first_port if self.role == "head" else self.first_port + 1
        if _port_open(self.ip, busy_port):
            _log(f"port {busy_port} is in use (a previous run of this job still stopping?); waiting")
            _wait_for(f"port {busy_port} to be free", lambda: not _port_open(self.ip, busy_port))
        self.tmp.mkdir(parents=True, exist_ok=True)
        _log(f"ray {self.role} ({self.ip}): {self.ncpus} CPU(s), {self.ngpus} GPU(s), "
             f"ports {self.first_port}.., temp {self.tmp}")
        usr_sig = _preemption_signal()

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
                        _log(f"ray {self.role} still up after {grace:.0f} s; killing it")
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
            _log(f"ray {self.role} stopped (ray start status {status})")


def _wait_for(what: str, ready, node: RayNode | None = None, timeout: float = START_TIMEOUT_S):
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


class SweepJob(Checkpointable):
    """The callable every task of the sweep job runs (one task per node).

    Parameters
    ----------
    sweep_yaml, train_yaml : str
        The resolved sweep and training configs (absolute paths).
    token_path : str
        The launch's Ray token file (mode 600, in the shared job folder).
    rendezvous : str
        Shared folder for the head / done / stopped files of each job run.
    requeued : bool
        Set by :meth:`checkpoint`: this run continues an interrupted one.

    Returns (rank 0) the best-trial record of :func:`sweeps.runner.run_sweep`; other ranks
    return None.
    """

    def __init__(self, sweep_yaml: str, train_yaml: str, token_path: str, rendezvous: str,
                 requeued: bool = False) -> None:
        self.sweep_yaml, self.train_yaml = sweep_yaml, train_yaml
        self.token_path, self.rendezvous = token_path, rendezvous
        self.requeued = requeued
        self._checkpointed = False
        self._node: RayNode | None = None
        self._stopping = threading.Event()   # Ray is being stopped on purpose (see _watchdog)

    def __getstate__(self) -> dict:
        # Nothing of a live run (Ray process, signal handlers) travels with the job.
        return {k: v for k, v in self.__dict__.items() if k in
                ("sweep_yaml", "train_yaml", "token_path", "rendezvous", "requeued")}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Called by submitit on rank 0 at the time limit or on preemption, before it requeues
        the job: stop this node's Ray and resubmit the job marked as requeued, so that it
        resumes the sweep from Tune's saved state."""
        self._checkpointed = True  # keep the token: the requeued job uses it
        self._stopping.set()
        _log("time limit or preemption: stopping Ray and requeueing; the sweep will resume")
        if self._node is not None:
            # In a thread: this signal handler may have interrupted a stop() holding its lock.
            stopper = threading.Thread(target=self._node.stop, kwargs={"grace": 10}, daemon=True)
            stopper.start()
            stopper.join(15)
        return DelayedSubmission(SweepJob(self.sweep_yaml, self.train_yaml, self.token_path,
                                          self.rendezvous, requeued=True))

    def _install_sigterm_handler(self) -> None:
        """SIGTERM (cancellation, or preemption by SLURM): SLURM kills the task soon; take this
        node's Ray down first so that no Ray process outlives the job.  Installed again after
        ``ray.init``, whose C++ core worker would otherwise abort the driver on SIGTERM."""
        if self._sigterm_handler is None:
            submitit_handler = signal.getsignal(signal.SIGTERM)   # it only logs the signal

            def handler(signum, frame):
                self._terminated = True
                self._stopping.set()
                _log("SIGTERM: stopping Ray")
                if self._node is not None:
                    threading.Thread(target=self._node.stop, kwargs={"grace": 5}, daemon=True).start()
                if callable(submitit_handler):
                    submitit_handler(signum, frame)

            self._sigterm_handler = handler
        signal.signal(signal.SIGTERM, self._sigterm_handler)   # (re)sets the OS-level handler

    def __call__(self) -> dict | None:
        import submitit

        from invattn.sweeps.ray_cluster import set_auth_mode

        env = submitit.JobEnvironment()
        self._terminated, self._sigterm_handler = False, None
        self._install_sigterm_handler()
        os.environ["RAY_AUTH_TOKEN_PATH"] = self.token_path
        os.environ.pop("RAY_AUTH_TOKEN", None)    # a token in the environment would win
        os.environ.pop("RAY_ADDRESS", None)
        os.environ["RAY_DISABLE_USAGE_STATS"] = "1"
        set_auth_mode("token")
        # Files of this run; a requeued run (same job id) gets a fresh set.
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
        rdv = Path(self.rendezvous) / f"{env.job_id}.{restarts}"
        rdv.mkdir(parents=True, exist_ok=True)
        base = port_base(env.raw_job_id)
        node_name = os.environ.get("SLURMD_NODENAME") or env.hostnames[env.node]
        ip = node_ip(node_name) if env.cluster == "slurm" else "127.0.0.1"
        tmp = Path(os.environ.get("RAY_TMP_ROOT", "/tmp")) / f"r{env.raw_job_id}.{env.node}"
        _log(f"{env}: Ray {'head' if env.global_rank == 0 else 'worker'} on {node_name}")
        if env.global_rank == 0:
            # Requeued by checkpoint() (time limit), or by SLURM itself (preemption).
            return self._head(env, rdv, base, ip, tmp, requeued=self.requeued or restarts > 0)
        self._worker(env, rdv, base, ip, tmp)
        return None

    # rank 0 -------------------------------------------------------------------------------
    def _head(self, env, rdv: Path, base: int, ip: str, tmp: Path, requeued: bool) -> dict:
        import ray

        from invattn.sweeps.runner import run_sweep

        sweep_cfg = OmegaConf.create(self.sweep_yaml)
        train_cfg = OmegaConf.create(self.train_yaml)
        address, n_nodes = f"{ip}:{base}", env.num_nodes
        ended_normally = False
        try:
            self._node = node = RayNode("head", 0, ip, base, tmp, dashboard=bool(sweep_cfg.ray.dashboard))
            node.start()
            _wait_for("ray head", lambda: _port_open(ip, base), node)
            # The head answers: let the workers join, and wait until every node is alive.
            # (run_sweep's own ray.init then reuses this connection.)
            ray.init(address=address, log_to_driver=bool(sweep_cfg.ray.log_to_driver))
            self._install_sigterm_handler()
            (rdv / ".head.tmp").write_text(json.dumps({"address": address}))
            os.replace(rdv / ".head.tmp", rdv / "head")
            _wait_for(f"ray: {n_nodes} node(s)", lambda: sum(n["Alive"] for n in ray.nodes()) >= n_nodes, node)
            _log(f"ray: all {n_nodes} node(s) joined; head at {address}")
            if sweep_cfg.ray.dashboard:
                _log(f"Ray dashboard: http://127.0.0.1:{_dashboard_port(base)} on {socket.gethostname()}; "
                     f"ssh -N -L 8265:127.0.0.1:{_dashboard_port(base)} {socket.gethostname()} "
                     f"and open http://127.0.0.1:8265 (token: cat {self.token_path})")
            threading.Thread(target=self._watchdog, args=(node, rdv), daemon=True).start()
            sweep_cfg.ray.address = address
            if requeued and not sweep_cfg.resume:
                # Resume only what Tune saved: a requeue before its first save starts afresh.
                sweep_cfg.resume = can_resume(sweep_cfg)
                _log(f"requeued job: {'resuming the sweep' if sweep_cfg.resume else 'no saved sweep yet, starting it'}")
            usr_sig = _preemption_signal()
            requeue_now = signal.getsignal(usr_sig)   # submitit's: checkpoint() + requeue
            stop = _GracefulStop(requeue_now)
            signal.signal(usr_sig, stop.handler)
            try:
                best = run_sweep(sweep_cfg, train_cfg)
            except KeyboardInterrupt as exc:   # Tune stopped with unfinished trials
                if stop.signum is None:
                    ended_normally = not self._terminated
                    raise RuntimeError(f"sweep {sweep_cfg.name!r} stopped with unfinished trials; "
                                       f"continue it with resume=true") from exc
                _log("Tune saved the sweep; requeueing")
                self._stopping.set()
                ray.shutdown()
                requeue_now(stop.signum, None)   # does not return (requeue: SystemExit)
                raise
            except SystemExit as exc:
                if exc.code == signal.SIGTERM:
                    # run_sweep's ray.init put Ray's driver handler back: SIGTERM -> sys.exit(15).
                    self._terminated = True
                    self._stopping.set()
                    _log("SIGTERM: stopping Ray")
                raise
            except Exception:
                ended_normally = not self._terminated
                raise
            finally:
                stop.cancel()
                signal.signal(usr_sig, requeue_now)
            ended_normally = True
            return best
        finally:
            self._stopping.set()
            ray.shutdown()
            (rdv / "done").touch()
            if self._node is not None and self._node.alive() and not self._terminated:
                # Workers first: a worker drains through the head.
                stopped = [rdv / f"stopped.{r}" for r in range(1, env.num_tasks)]
                try:
                    _wait_for("ray workers stopping", lambda: all(p.exists() for p in stopped), timeout=60)
                except TimeoutError as exc:
                    _log(f"{exc}; stopping the head anyway")
            if self._node is not None:
                # SIGTERM: SLURM kills the task after KillWait; be done before.
                self._node.stop(grace=5 if self._terminated else 40)
            if ended_normally and not self._checkpointed:
                # The sweep is over (done or failed); a requeued or preempted job keeps both.
                Path(self.token_path).unlink(missing_ok=True)
                shutil.rmtree(rdv, ignore_errors=True)

    def _watchdog(self, node: RayNode, rdv: Path) -> None:
        """End this task if the Ray head dies under the driver: Tune would otherwise wait for it
        until the time limit.  (No result is written; the launcher then shows this log.)"""
        while node.alive():
            if self._stopping.wait(1):
                return
        if self._stopping.is_set():
            return
        _log("ray head exited unexpectedly; ending the job")
        (rdv / "done").touch()   # the workers stop too
        node.stop(grace=0)
        os._exit(1)

    # rank > 0 -----------------------------------------------------------------------------
    def _worker(self, env, rdv: Path, base: int, ip: str, tmp: Path) -> None:
        head_file, done = rdv / "head", rdv / "done"
        # The head may fail before it is up: it then writes `done` (and no `head`).
        _wait_for("waiting for the ray head", lambda: head_file.exists() or done.exists())
        if done.exists():
            raise RuntimeError("the Ray head (rank 0) stopped before the cluster was up; see its log")
        head_address = json.loads(head_file.read_text())["address"]
        try:
            self._node = node = RayNode("worker", env.node, ip, base, tmp, head_address=head_address)
            node.start()
            # Until the head is done (or gone: rank 0 removes the folder at the very end).
            while node.alive() and not done.exists() and head_file.exists():
                time.sleep(0.5)
            if not node.alive() and not done.exists() and not self._terminated:
                # Not an error of this task: Tune retries the trials that ran here.
                _log("ray worker exited before the head was done")
        finally:
            if self._node is not None:
                self._node.stop()
            if rdv.exists():
                (rdv / f"stopped.{env.global_rank}").touch()


class _GracefulStop:
    """The preemption signal (time limit, preemption) while Tune runs: stop Tune first, so that
    it saves the experiment state, then let submitit checkpoint and requeue (as sweep.sh does
    with SIGINT to its driver).  Tune gets ``RAY_STOP_GRACE`` seconds (default 45) before a
    second SIGINT stops it at once; outside Tune's loop submitit requeues right away."""

    def __init__(self, requeue_now) -> None:
        self.requeue_now, self.signum, self._timer = requeue_now, None, None

    def handler(self, signum, frame) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if self.signum is not None or getattr(tune_handler, "__name__", "") != "signal_interrupt_tune_run":
            return self.requeue_now(signum, frame)
        self.signum = signum
        _log("time limit or preemption: asking Tune to save the sweep and stop")
        tune_handler(signal.SIGINT, frame)   # what Ctrl-C does: Tune ends its loop and saves
        self._timer = threading.Timer(float(os.environ.get("RAY_STOP_GRACE", 45)),
                                      os.kill, (os.getpid(), signal.SIGINT))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ---- the launcher -----------------------------------------------------------------------------

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
    resumable = can_resume(sweep_cfg)
    if sweep_cfg.resume and not resumable:
        raise ValueError(f"resume=true but there is no sweep to resume at {experiment_path(sweep_cfg)}")
    if not sweep_cfg.resume and resumable:
        raise FileExistsError(f"a sweep named {sweep_cfg.name!r} already exists at {experiment_path(sweep_cfg)}; "
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


def launch(sweep_cfg: DictConfig, argv: list[str]) -> int:
    """``invattn sweep launcher=submitit ...``: submit the sweep job, print where to watch it,
    and (``submitit.wait=true``) wait for the best-trial record.  Exit code 0 on success,
    1 if the job failed (its log is shown)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from invattn.sweeps.cli import load_sweep_configs

    _, train_cfg = load_sweep_configs(argv)
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
          f"  results: {Path(sweep_cfg.results_dir).resolve() / str(sweep_cfg.name)}", flush=True)
    if sweep_cfg.ray.dashboard:
        where = "the job's first node" if on_slurm else "this machine"
        print(f"  Ray dashboard: http://127.0.0.1:{_dashboard_port(base)} on {where}"
              + (f"; from your machine: ssh -N -L 8265:127.0.0.1:{_dashboard_port(base)} <first node> "
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
                  f"ssh -N -L 8265:127.0.0.1:{_dashboard_port(base)} {head[0]}", flush=True)

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
          f"results: {Path(sweep_cfg.results_dir).resolve() / str(sweep_cfg.name)}/best.json, trials.csv",
          flush=True)
    return 0


def _main(argv: list[str]) -> int:
    """``python -m invattn.sweeps.submitit_launcher --can-resume [key=value ...]``: exit 0 if the sweep
    these overrides describe has saved state to resume (used by slurm/sweep.sh on requeue)."""
    from invattn.sweeps.cli import load_sweep_configs

    if not argv or argv[0] != "--can-resume":
        print("usage: python -m invattn.sweeps.submitit_launcher --can-resume [key=value ...]", file=sys.stderr)
        return 2
    sweep_cfg, _ = load_sweep_configs(argv[1:])
    return 0 if can_resume(sweep_cfg) else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
