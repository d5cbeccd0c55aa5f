#!/usr/bin/env bash
# Regenerate an N-body dataset on SLURM: an array job with one shard per task, then a
# merge job that runs only if every shard succeeded (--dependency=afterok).
#
#   slurm/regenerate_nbody.sh [options] OUT_DIR N_SHARDS [key=value ...]
#
#   options:
#     --throttle N      at most N shards run at once (--array=0-K%N)
#     --sbatch ARG      extra sbatch argument for both jobs (repeatable),
#                       e.g. --sbatch --partition=cpu --sbatch --time=2:00:00
#     --wait            block until the merge job ends; exit with its status
#   key=value           passed to `invattn simulate` and `invattn simulate-merge`
#                       (e.g. preset=paper n_train=50000 seed=7)
#
# Resubmitting the same command after a cancellation, a failure or a time limit finishes
# the job: the simulator skips every complete shard, so only missing shards are computed.
# Logs: OUT_DIR/logs/simulate-<array>_<index>.out and OUT_DIR/logs/merge-<job>.out.
# SBATCH_* environment variables (SBATCH_PARTITION, SBATCH_ACCOUNT, ...) apply as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '5,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

throttle="" wait=0 extra=()
while (($#)); do
    case "$1" in
        --throttle) throttle="${2:?--throttle needs a number}"; shift 2 ;;
        --sbatch) extra+=("${2:?--sbatch needs an argument}"); shift 2 ;;
        --wait) wait=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "regenerate_nbody.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
(($# >= 2)) || usage
out="$1" n_shards="$2"; shift 2
[[ "$n_shards" =~ ^[1-9][0-9]*$ ]] || { echo "regenerate_nbody.sh: N_SHARDS must be a positive integer, got '$n_shards'" >&2; exit 2; }
[[ -z "$throttle" || "$throttle" =~ ^[1-9][0-9]*$ ]] || { echo "regenerate_nbody.sh: --throttle must be a positive integer" >&2; exit 2; }
for arg in "$@"; do
    [[ "$arg" == *=* ]] || { echo "regenerate_nbody.sh: expected key=value, got '$arg'" >&2; exit 2; }
    case "$arg" in n_shards=*|shard_index=*|out=*)
        echo "regenerate_nbody.sh: '$arg' is set by this script (OUT_DIR N_SHARDS)" >&2; exit 2 ;;
    esac
done
command -v sbatch >/dev/null || { echo "regenerate_nbody.sh: sbatch not found (no SLURM here?)" >&2; exit 2; }

mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"           # jobs may start in another directory
export INVATTN_ROOT="$ROOT"         # sbatch exports the environment to the jobs
export INVATTN_VENV="${INVATTN_VENV:-$ROOT/.venv}"

array="0-$((n_shards - 1))${throttle:+%$throttle}"
sim_job="$(sbatch --parsable "${extra[@]}" --array="$array" \
    --output="$out/logs/simulate-%A_%a.out" \
    "$ROOT/slurm/simulate.sh" "$out" "n_shards=$n_shards" "$@")"
sim_job="${sim_job%%;*}"
echo "submitted array job $sim_job: shards $array -> $out"

# --kill-on-invalid-dep: if a shard fails or the array is cancelled, the merge job is
# removed instead of pending forever; resubmitting this command creates a new pair.
merge_job="$(sbatch --parsable "${extra[@]}" --dependency="afterok:$sim_job" --kill-on-invalid-dep=yes \
    --output="$out/logs/merge-%j.out" \
    "$ROOT/slurm/simulate_merge.sh" "$out" "n_shards=$n_shards" "$@")"
merge_job="${merge_job%%;*}"
echo "submitted merge job $merge_job (afterok:$sim_job)"
((wait)) || exit 0

# Wait for the merge job.  (`sbatch --wait` would do, but it polls ever more slowly, up to
# half a minute apart.)  Without accounting, scontrol knows a finished job for MinJobAge.
while :; do
    info="$(scontrol show job -o "$merge_job" 2>/dev/null)" || {
        echo "regenerate_nbody.sh: job $merge_job is no longer known to SLURM; see $out/logs/" >&2; exit 1; }
    state="$(sed -n 's/.* JobState=\([A-Z_]*\).*/\1/p' <<< "$info")"
    case "$state" in
        PENDING|CONFIGURING|RUNNING|COMPLETING|REQUEUED|REQUEUE_HOLD|RESIZING|SUSPENDED|SIGNALING|STAGE_OUT|"")
            sleep 1 ;;
        COMPLETED) echo "merge job $merge_job finished: $out"; exit 0 ;;
        *)
            code="$(sed -n 's/.* ExitCode=\([0-9]*\):.*/\1/p' <<< "$info")"
            echo "regenerate_nbody.sh: merge job $merge_job ended $state (exit ${code:-?})" \
                 "-- a shard failed or the array was cancelled; see $out/logs/ and resubmit" >&2
            exit $((${code:-1} ? ${code:-1} : 1)) ;;
    esac
done
