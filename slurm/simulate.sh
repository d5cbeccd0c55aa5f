#!/usr/bin/env bash
# One shard of an N-body dataset per SLURM array task (DESIGN section 6, "Dataset
# regeneration at scale").  Usually submitted by slurm/regenerate_nbody.sh together with
# the merge job; by hand:
#
#   sbatch --array=0-63 slurm/simulate.sh OUT_DIR [key=value ...]
#
# Array task i runs `invattn simulate out=OUT_DIR n_shards=K shard_index=i key=value ...`.
# K defaults to the array's highest index + 1; pass n_shards=K to resubmit only some
# indices (e.g. `--array=5,9 ... n_shards=64`).  A shard that is already complete is
# skipped by the simulator, and shards are written under a unique temporary name and then
# renamed, so a requeued or resubmitted task never recomputes or corrupts a finished shard.
# Every #SBATCH line below can be overridden on the sbatch command line
# (e.g. `sbatch --time=4:00:00 --cpus-per-task=8 --array=0-99%20 ...`).
#
# Environment: INVATTN_ROOT (the checkout; found automatically when you submit this file
# from it), INVATTN_VENV (default $INVATTN_ROOT/.venv).  Numba uses
# $SLURM_CPUS_PER_TASK threads.
#
#SBATCH --job-name=invattn-simulate
#SBATCH --array=0-7
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%x-%A_%a.out
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

if (($# < 1)) || [[ "$1" == *=* ]]; then
    echo "usage: sbatch --array=0-\$((K-1)) slurm/simulate.sh OUT_DIR [n_shards=K] [key=value ...]" >&2
    exit 2
fi
out="$1"; shift
: "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array=0-\$((K-1))}"
n_shards=""
for arg in "$@"; do
    case "$arg" in
        n_shards=*) n_shards="${arg#n_shards=}" ;;
        shard_index=*) echo "simulate.sh: shard_index comes from SLURM_ARRAY_TASK_ID; do not pass it" >&2; exit 2 ;;
        out=*) echo "simulate.sh: give the output directory as the first argument, not out=" >&2; exit 2 ;;
    esac
done
if [[ -z "$n_shards" ]]; then
    n_shards=$((SLURM_ARRAY_TASK_MAX + 1))
    set -- "n_shards=$n_shards" "$@"
fi
if ((SLURM_ARRAY_TASK_ID >= n_shards)); then
    echo "simulate.sh: array index $SLURM_ARRAY_TASK_ID >= n_shards=$n_shards" >&2
    exit 2
fi

invattn_log "shard $SLURM_ARRAY_TASK_ID of $n_shards -> $out (restart ${SLURM_RESTART_COUNT:-0})"
"$INVATTN" simulate out="$out" shard_index="$SLURM_ARRAY_TASK_ID" "$@"
invattn_log "shard $SLURM_ARRAY_TASK_ID done"
