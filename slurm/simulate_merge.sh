#!/usr/bin/env bash
# Join the shards written by slurm/simulate.sh into one HDF5 file per split (a virtual
# dataset over the shard files; `invattn simulate-merge` checks every source shard).
# Submitted by slurm/regenerate_nbody.sh with --dependency=afterok:<array job>; by hand:
#
#   sbatch --dependency=afterok:1234 slurm/simulate_merge.sh OUT_DIR n_shards=K [key=value ...]
#
#SBATCH --job-name=invattn-simulate-merge
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:15:00
#SBATCH --output=slurm-%x-%j.out
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

if (($# < 2)) || [[ "$1" == *=* ]]; then
    echo "usage: sbatch slurm/simulate_merge.sh OUT_DIR n_shards=K [key=value ...]" >&2
    exit 2
fi
out="$1"; shift
invattn_log "merging shards in $out"
"$INVATTN" simulate-merge out="$out" "$@"
invattn_log "merge done"
