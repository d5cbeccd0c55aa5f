"""The sweep job inside its allocation: what every task of ``invattn sweep launcher=submitit`` runs.

One task per node runs :class:`SweepJob`: rank 0 starts the Ray head, the other ranks start Ray
workers that join it (:class:`sweeps.ray_node.RayNode`), rank 0 runs the sweep driver in-process
(:func:`sweeps.runner.run_sweep`, ``ray.address`` = the head) and returns the best-trial record,
which comes back to the launcher as ``job.result()``.  (DESIGN sections 6 and 8, "Distributed";
same bring-up as ``slurm/lib/ray_cluster.sh``.)

- token authentication: ``RAY_AUTH_MODE=token`` with the launch's token file (written by the
  launcher, mode 600), exported as ``RAY_AUTH_TOKEN_PATH`` before Ray starts;
- node addresses from SLURM's ``NodeAddr`` (:func:`sweeps.slurm_env.node_ip`);
- rendezvous through files in the shared job folder: rank 0 writes ``head`` once the head
  answers, workers join then; at the end rank 0 writes ``done``, workers stop and write
  ``stopped.<rank>``, then the head stops (a worker drains through the head); a worker task
  stops its Ray node on SIGTERM (cancellation).

Time limit or preemption: SLURM sends USR2 ``signal_delay_s`` before the limit.  Rank 0 first
stops Tune as Ctrl-C would (Tune saves the experiment state; ``RAY_STOP_GRACE`` seconds at
most), then submitit calls :meth:`SweepJob.checkpoint` (stop Ray, resubmit the same job marked
as requeued) and requeues the job.  The requeued job (also one requeued by SLURM itself,
``SLURM_RESTART_COUNT > 0``) resumes the sweep (``resume=true``) when Tune had saved its state,
and starts it afresh otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf
from submitit.helpers import Checkpointable, DelayedSubmission

from invattn.files import write_atomic
from invattn.sweeps.layout import SweepLayout
from invattn.sweeps.ray_node import RayNode, dashboard_port, port_base, port_open, wait_for
from invattn.sweeps.slurm_env import log, node_ip, preemption_signal

__all__ = ["SweepJob"]


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
        log("time limit or preemption: stopping Ray and requeueing; the sweep will resume")
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
                log("SIGTERM: stopping Ray")
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
        log(f"{env}: Ray {'head' if env.global_rank == 0 else 'worker'} on {node_name}")
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
            wait_for("ray head", lambda: port_open(ip, base), node)
            # The head answers: let the workers join, and wait until every node is alive.
            # (run_sweep's own ray.init then reuses this connection.)
            ray.init(address=address, log_to_driver=bool(sweep_cfg.ray.log_to_driver))
            self._install_sigterm_handler()
            write_atomic(rdv / "head", json.dumps({"address": address}))
            wait_for(f"ray: {n_nodes} node(s)", lambda: sum(n["Alive"] for n in ray.nodes()) >= n_nodes, node)
            log(f"ray: all {n_nodes} node(s) joined; head at {address}")
            if sweep_cfg.ray.dashboard:
                log(f"Ray dashboard: http://127.0.0.1:{dashboard_port(base)} on {socket.gethostname()}; "
                    f"ssh -N -L 8265:127.0.0.1:{dashboard_port(base)} {socket.gethostname()} "
                    f"and open http://127.0.0.1:8265 (token: cat {self.token_path})")
            threading.Thread(target=self._watchdog, args=(node, rdv), daemon=True).start()
            sweep_cfg.ray.address = address
            if requeued and not sweep_cfg.resume:
                # Resume only what Tune saved: a requeue before its first save starts afresh.
                sweep_cfg.resume = SweepLayout.of(sweep_cfg).can_resume()
                log(f"requeued job: {'resuming the sweep' if sweep_cfg.resume else 'no saved sweep yet, starting it'}")
            usr_sig = preemption_signal()
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
                log("Tune saved the sweep; requeueing")
                self._stopping.set()
                ray.shutdown()
                requeue_now(stop.signum, None)   # does not return (requeue: SystemExit)
                raise
            except SystemExit as exc:
                if exc.code == signal.SIGTERM:
                    # run_sweep's ray.init put Ray's driver handler back: SIGTERM -> sys.exit(15).
                    self._terminated = True
                    self._stopping.set()
                    log("SIGTERM: stopping Ray")
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
                    wait_for("ray workers stopping", lambda: all(p.exists() for p in stopped), timeout=60)
                except TimeoutError as exc:
                    log(f"{exc}; stopping the head anyway")
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
        log("ray head exited unexpectedly; ending the job")
        (rdv / "done").touch()   # the workers stop too
        node.stop(grace=0)
        os._exit(1)

    # rank > 0 -----------------------------------------------------------------------------
    def _worker(self, env, rdv: Path, base: int, ip: str, tmp: Path) -> None:
        head_file, done = rdv / "head", rdv / "done"
        # The head may fail before it is up: it then writes `done` (and no `head`).
        wait_for("waiting for the ray head", lambda: head_file.exists() or done.exists())
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
                log("ray worker exited before the head was done")
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
        log("time limit or preemption: asking Tune to save the sweep and stop")
        tune_handler(signal.SIGINT, frame)   # what Ctrl-C does: Tune ends its loop and saves
        self._timer = threading.Timer(float(os.environ.get("RAY_STOP_GRACE", 45)),
                                      os.kill, (os.getpid(), signal.SIGINT))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
