# Sourced by the sbatch scripts in slurm/ once INVATTN_ROOT is known.
# Sets INVATTN_VENV (default: the checkout's .venv) and INVATTN (the CLI), puts the venv
# first on PATH, and bounds thread pools by the allocation instead of the host.
# shellcheck shell=bash
INVATTN_VENV="${INVATTN_VENV:-$INVATTN_ROOT/.venv}"
INVATTN="$INVATTN_VENV/bin/invattn"
if [[ ! -x "$INVATTN" ]]; then
    echo "invattn slurm: $INVATTN not found: run 'make install' in $INVATTN_ROOT or set INVATTN_VENV" >&2
    exit 2
fi
export INVATTN_ROOT INVATTN_VENV
export PATH="$INVATTN_VENV/bin:$PATH"
# Numba, OpenMP and BLAS would otherwise start one thread per host core, oversubscribing
# the CPUs SLURM gave this task (and a shared node's other jobs).
_invattn_cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-$_invattn_cpus}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$_invattn_cpus}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$_invattn_cpus}"
unset _invattn_cpus

invattn_log() { echo "[$(date +%H:%M:%S) ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID} ${SLURMD_NODENAME:-$(hostname -s)}] $*"; }
