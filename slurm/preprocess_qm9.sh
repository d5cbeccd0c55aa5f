#!/usr/bin/env bash
# QM9 preprocessing (raw QM9 -> HDF5 shards) inside one SLURM allocation, with Dask's
# embedded LocalCluster sized to the allocation:
#
#   sbatch --cpus-per-task=32 --mem=64G slurm/preprocess_qm9.sh source=/data/qm9/dsgdb9nsd.xyz.tar.bz2 out=data/qm9
#
# Arguments are `invattn preprocess-qm9` keys (see `invattn preprocess-qm9 --help`); they
# come after this script's defaults, so they win.  Defaults set here:
#   cluster=local local.n_workers=$SLURM_CPUS_PER_TASK progress=false
# (one single-threaded worker process per allocated CPU: RDKit holds the GIL; the
# workers' memory limit is their share of the allocation, see local.memory_limit).
#
# Alternative, for inputs too large for one node: run the same command with
# `cluster=slurm` from a login node (no sbatch); dask-jobqueue then submits
# `slurm.jobs` worker jobs of `slurm.cores` cores each (keys slurm.queue, slurm.account,
# slurm.memory, slurm.walltime, ...) and the driver stays where you started it:
#
#   invattn preprocess-qm9 cluster=slurm slurm.jobs=8 slurm.cores=16 slurm.memory=32GB source=... out=...
#
# Finished shards are kept on a re-run, so resubmitting after a failure continues.
# Every #SBATCH line can be overridden on the sbatch command line.
#
#SBATCH --job-name=invattn-preprocess-qm9
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%j.out
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

# One worker per CPU of this task; each worker is single-threaded, so Numba/BLAS too.
n_workers="${SLURM_CPUS_PER_TASK:-1}"
export NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Dask's spill and lock files on node-local scratch, not on the shared submit directory.
export DASK_TEMPORARY_DIRECTORY="${DASK_TEMPORARY_DIRECTORY:-${TMPDIR:-/tmp}}"

invattn_log "preprocess-qm9 with $n_workers local Dask worker(s): $*"
"$INVATTN" preprocess-qm9 cluster=local local.n_workers="$n_workers" progress=false "$@"
invattn_log "preprocess-qm9 done"
