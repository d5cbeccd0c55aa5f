"""A trivial Ray driver for slurm/ray_smoke.sh: is the job's Ray cluster complete and usable?

Connects to the cluster at ``RAY_ADDRESS`` (token authentication from the environment),
checks that ``expected`` nodes are alive, runs one task pinned to each node, checks that a
client with a wrong token is refused, and prints a JSON summary on the last line.
Exit status 1 if a node is missing, a task fails or the wrong token is accepted.

Usage: python ray_smoke_driver.py EXPECTED_NODES
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=1)
def where() -> dict:
    """Report where a task ran: Ray's node id, and the SLURM node whose srun step started it."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "slurm_node": os.environ.get("SLURMD_NODENAME")}


def status_with_token(address: str, token: str) -> tuple[bool, str]:
    """Run ``ray status`` with ``token`` in place of the job's token file: (ok, last error line)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    proc = subprocess.run([ray_cli, "status", f"--address={address}"], env=env,
                          capture_output=True, text=True, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1][-200:] if lines else "")


def main() -> int:
    expected = int(sys.argv[1])
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    alive = [n for n in ray.nodes() if n["Alive"]]
    refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in alive]
    ran = ray.get(refs, timeout=120)
    summary = {
        "alive_nodes": len(alive),
        "expected_nodes": expected,
        "nodes": [{"node_id": n["NodeID"], "address": n["NodeManagerAddress"],
                   "port": n["NodeManagerPort"], "cpus": n["Resources"].get("CPU", 0),
                   "head": "node:__internal_head__" in n["Resources"]} for n in alive],
        "tasks_ran_on": sorted(r["node_id"] for r in ran),
        # SLURM node -> "head" / "worker", from the task that ran on each Ray node
        "slurm_nodes": {r["slurm_node"]: ("head" if any(n["NodeID"] == r["node_id"] and
                        "node:__internal_head__" in n["Resources"] for n in alive) else "worker")
                        for r in ran},
        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
    }
    # Token auth really on: the same command succeeds with the job's token, fails with another.
    with open(os.environ["RAY_AUTH_TOKEN_PATH"]) as f:
        right_ok, _ = status_with_token(os.environ["RAY_ADDRESS"], f.read().strip())
    wrong_ok, wrong_err = status_with_token(os.environ["RAY_ADDRESS"], "0" * 64)
    summary.update(accepts_job_token=right_ok, rejects_wrong_token=not wrong_ok, wrong_token_error=wrong_err)
    ok = (len(alive) == expected and right_ok and not wrong_ok
          and summary["tasks_ran_on"] == sorted(n["NodeID"] for n in alive))
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
