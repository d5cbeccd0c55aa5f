#!/usr/bin/env bash
# A Ray Tune sweep on a SLURM allocation (DESIGN section 6): a Ray head on the first node,
# one Ray worker on each other node, the sweep driver against that cluster, tear-down.
#
#   sbatch slurm/sweep.sh [key=value ...]                 # overrides go to `invattn sweep`
#   sbatch --nodes=4 --gpus-per-node=4 --cpus-per-task=32 --time=24:00:00 slurm/sweep.sh ...
#
# Every #SBATCH line can be overridden on the sbatch command line.  Keep one task per node
# (--ntasks-per-node=1): the task's CPUs (--cpus-per-task) and the node's GPUs are what
# Ray gets on that node.
#
# Time limit and preemption: SLURM sends USR1 60 s before the limit (--signal=B:USR1@60);
# the driver then gets SIGINT (Ray Tune saves the experiment), Ray is stopped and the job
# requeues itself (--requeue; RAY_REQUEUE_ON_TIMEOUT=0 to just stop).  The requeued job
# keeps its id, hence its results_dir, and the sweep resumes there.
#
# Environment: INVATTN_ROOT, INVATTN_VENV (see slurm/lib/env.sh); RESULTS_DIR (default
# $SLURM_SUBMIT_DIR/results/sweep-$SLURM_JOB_ID; must be on a filesystem every node sees,
# Tune's storage_path); Ray tunables in slurm/lib/ray_cluster.sh.
#
#SBATCH --job-name=invattn-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
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

RESULTS_DIR="${RESULTS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/results/sweep-$SLURM_JOB_ID}"
mkdir -p "$RESULTS_DIR"
invattn_log "sweep: results in $RESULTS_DIR (restart ${SLURM_RESTART_COUNT:-0})"

# A requeued job (time limit, preemption) continues the sweep it started -- if Tune saved it:
# a requeue before Tune's first save starts afresh (resume=true without saved state is an error).
resume=()
if ((${SLURM_RESTART_COUNT:-0} > 0)); then
    if python -m invattn.sweeps.cli --can-resume results_dir="$RESULTS_DIR" "$@"; then
        resume=(resume=true)
    else
        invattn_log "sweep: requeued, but no saved sweep state yet: starting it afresh"
    fi
fi

ray_cluster_traps
ray_cluster_up          # -> RAY_HEAD_ADDR (ip:port), RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH
rc=0
# ---- the sweep driver: the only line that differs from slurm/ray_smoke.sh ---------------
ray_cluster_run "$INVATTN" sweep ray.address="$RAY_HEAD_ADDR" results_dir="$RESULTS_DIR" "${resume[@]}" "$@" || rc=$?
# -------------------------------------------------------------------------------------------
ray_cluster_finish
invattn_log "sweep: driver exited with status $rc"
exit "$rc"
