#!/usr/bin/env bash
# One Ray node for the whole job: started by ray_cluster_up as a long `srun --overlap` step.
#
#   ray_node.sh head 0 | ray_node.sh worker INDEX
#
# INDEX is the node's position in the job's node list.  It picks this node's port block,
# so that several Ray nodes can share one host (the dev cluster's virtual nodes n1/n2):
#   slot = INDEX % 10, P = RAY_PORT_BASE + 20 * slot
#   P+0 GCS (head)  P+1 raylet  P+2 object manager  P+3 agent gRPC  P+4 agent HTTP
#   P+5 metrics  P+6 runtime-env agent  P+7 Ray client server (head)  P+8 dashboard (head)
#   worker processes: 10000 + 500 * slot ... + 499
# Environment from ray_cluster_up: INVATTN_ROOT, RAY_HEAD_IP, RAY_PORT_BASE, RAY_TMP_ROOT,
# RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_STOP_FILE (+ optional RAY_NUM_CPUS, RAY_NUM_GPUS,
# RAY_OBJECT_STORE_BYTES, RAY_DASHBOARD=false, RAY_KEEP_TMP=1).
set -euo pipefail
role="${1:?usage: ray_node.sh head|worker INDEX}" idx="${2:?usage: ray_node.sh head|worker INDEX}"
source "$INVATTN_ROOT/slurm/lib/env.sh"
source "$INVATTN_ROOT/slurm/lib/ray_cluster.sh"

node="${SLURMD_NODENAME:-$(hostname -s)}"
ip="$(ray_node_ip "$node")"
slot=$((idx % 10))
p=$((RAY_PORT_BASE + 20 * slot))
wmin=$((10000 + 500 * slot))
# Explicit resources: srun no longer passes --cpus-per-task on (Slurm >= 22.05) and Ray
# would otherwise count the whole host's CPUs and GPUs.
ncpus="${RAY_NUM_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}}"
if [[ -n "${RAY_NUM_GPUS:-}" ]]; then ngpus="$RAY_NUM_GPUS"
elif [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then ngpus="$SLURM_GPUS_ON_NODE"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != NoDevFiles ]]; then
    ngpus="$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)"
else ngpus=0; fi
# Short: Ray's Unix socket paths under it must stay below 107 bytes.
tmp="$RAY_TMP_ROOT/r${SLURM_JOB_ID}.$idx"
mkdir -p "$tmp"

args=(--block --disable-usage-stats --node-ip-address="$ip" --temp-dir="$tmp"
      --num-cpus="$ncpus" --num-gpus="$ngpus"
      --node-manager-port=$((p + 1)) --object-manager-port=$((p + 2))
      --dashboard-agent-grpc-port=$((p + 3)) --dashboard-agent-listen-port=$((p + 4))
      --metrics-export-port=$((p + 5)) --runtime-env-agent-port=$((p + 6))
      --min-worker-port="$wmin" --max-worker-port=$((wmin + 499)))
[[ -n "${RAY_OBJECT_STORE_BYTES:-}" ]] && args+=(--object-store-memory="$RAY_OBJECT_STORE_BYTES")
if [[ "$role" == head ]]; then
    # The dashboard listens on 127.0.0.1 only (reach it through an ssh tunnel).
    args+=(--head --port="$p" --ray-client-server-port=$((p + 7))
           --include-dashboard="${RAY_DASHBOARD:-true}" --dashboard-host=127.0.0.1 --dashboard-port=$((p + 8)))
else
    args+=(--address="$RAY_HEAD_IP:$RAY_PORT_BASE")
fi

invattn_log "ray $role on $node ($ip): $ncpus CPU(s), $ngpus GPU(s), ports $p.., temp $tmp"
ray start "${args[@]}" &
ray_pid=$!
# SLURM signals every process of the step on cancellation, so Ray sees it anyway; the
# trap only makes sure `ray start` gets it too.
trap 'kill -TERM "$ray_pid" 2>/dev/null || true' TERM INT
# Normal stop: ray_cluster_down creates $RAY_STOP_FILE.<role> (workers first, then the
# head); SIGTERM to `ray start --block` alone then shuts this node down cleanly.
stop_file="$RAY_STOP_FILE.$role"
while kill -0 "$ray_pid" 2>/dev/null && [[ ! -e "$stop_file" ]]; do sleep 0.5; done
kill -TERM "$ray_pid" 2>/dev/null || true
rc=0
wait "$ray_pid" || rc=$?
if kill -0 "$ray_pid" 2>/dev/null; then wait "$ray_pid" || rc=$?; fi
invattn_log "ray $role on $node stopped (ray start status $rc)"
# A Ray process that was still exiting may add a file while rm runs ("Directory not empty"):
# retry, and never fail the step over it.
if [[ "${RAY_KEEP_TMP:-0}" != 1 ]]; then
    for _ in 1 2 3 4 5; do rm -rf "$tmp" 2>/dev/null && break; sleep 0.5; done
fi
# A stop that we asked for is a success (`ray start --block` exits 1 on SIGTERM).
[[ -e "$stop_file" ]] && exit 0
exit "$rc"
