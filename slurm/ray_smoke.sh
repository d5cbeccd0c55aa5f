#!/usr/bin/env bash
# Check that a Ray cluster comes up on an allocation exactly as slurm/sweep.sh builds it
# (head on the first node, one worker per other node, token auth), with a trivial driver
# that runs one task on every node.  Cheap to run before queueing a long sweep.
#
#   sbatch --wait slurm/ray_smoke.sh          # 2 nodes; last output line is JSON
#   sbatch --nodes=4 --gpus-per-node=1 slurm/ray_smoke.sh
#
#SBATCH --job-name=invattn-ray-smoke
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --signal=B:USR1@60
set -euo pipefail

# This batch copy runs from SLURM's spool directory: find the checkout through
# $INVATTN_ROOT, else the submitted script's path (scontrol's Command=), else the submit dir.
if [[ -z "${INVATTN_ROOT:-}" ]]; then
    _cmd="$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/.* Command=\(.*\) WorkDir=.*/\1/p')"
    for _d in "${_cmd%/slurm/*}" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do
        if [[ -n "$_d" && -f "$_d/slurm/lib/env.sh" ]]; then INVATTN_ROOT="$(cd "$_d" && pwd)"; break; fi
    done
fi
source "${INVATTN_ROOT:?cannot find the invattn checkout: set INVATTN_ROOT}/slurm/lib/env.sh"
source "$INVATTN_ROOT/slurm/lib/ray_cluster.sh"
export RAY_REQUEUE_ON_TIMEOUT=0

ray_cluster_traps
ray_cluster_up
rc=0
ray_cluster_run python "$INVATTN_ROOT/slurm/lib/ray_smoke_driver.py" "$SLURM_JOB_NUM_NODES" || rc=$?
ray_cluster_finish
exit "$rc"
