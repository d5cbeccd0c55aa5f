# Ray cluster bring-up and tear-down inside a SLURM allocation; sourced by slurm/sweep.sh
# and slurm/ray_smoke.sh after slurm/lib/env.sh (and by ray_node.sh for ray_node_ip).
#
#   ray_cluster_traps    install the signal handlers (USR1 = time limit, TERM, EXIT)
#   ray_cluster_up       start the head on the first node and one worker per other node
#                        (one long `srun --overlap` step each), wait until all joined;
#                        sets RAY_HEAD_ADDR=ip:port and exports RAY_ADDRESS
#   ray_cluster_down     stop every Ray node, remove the token and temporary dirs (idempotent)
#   ray_cluster_run CMD  run the driver CMD in the background and wait, so that the
#                        time-limit signal (USR1) is handled while it runs; on USR1 the
#                        driver gets SIGINT (Ray Tune saves its state), Ray is stopped and
#                        the job requeued (RAY_REQUEUE_ON_TIMEOUT=1, the default)
#
# The Distributed pitfalls of DESIGN section 8, and what is done about each:
# - Slurm >= 22.05: srun does not inherit --cpus-per-task -> SRUN_CPUS_PER_TASK is
#   exported, and `ray start` gets explicit --num-cpus/--num-gpus.
# - A Ray node's long-lived srun step would block later steps -> every step uses --overlap.
# - Token authentication: RAY_AUTH_MODE=token, one random token per job in a file of mode
#   600 on a filesystem all nodes see, RAY_AUTH_TOKEN_PATH exported to every step and to
#   the driver (names checked against Ray 2.60's ray/_private/authentication).
# - Unix socket paths must fit in 107 bytes -> a short --temp-dir (/tmp/r<job>.<node index>).
# - Debian maps the hostname to 127.0.1.1 -> addresses come from SLURM's NodeAddr,
#   resolved to a non-loopback IPv4 address when there is one (override: RAY_HEAD_IP).
#   (Ray itself replaces 127.0.0.1 by the host's routable address; on the dev cluster
#   both virtual nodes therefore show the same address, with different ports.)
# - Files every node must see (token, stop file) live in RAY_TOKEN_DIR, by default under
#   $HOME, which clusters share between nodes.
# - Several Ray nodes on one host (the dev cluster's virtual nodes, or two jobs sharing a
#   node) need distinct ports -> every node gets its own port block (see ray_node.sh).
#
# Tunables (environment): RAY_START_TIMEOUT (s, default 180), RAY_PORT_BASE (default
# 20000 + 1000 * (job id % 12)), RAY_TMP_ROOT (default /tmp), RAY_TOKEN_DIR (default
# $HOME/.invattn/ray-tokens), RAY_NUM_CPUS / RAY_NUM_GPUS (per node; default from the
# allocation), RAY_OBJECT_STORE_BYTES, RAY_STOP_GRACE (s the driver gets after USR1,
# default 45), RAY_REQUEUE_ON_TIMEOUT (default 1).
# shellcheck shell=bash

RAY_STEP_PIDS=()
_RAY_DOWN_DONE=0
_RAY_TIMED_OUT=0
_RAY_DRIVER_PID=""

# ray_node_ip NODENAME -> an IPv4 address at which other nodes reach NODENAME
ray_node_ip() {
    local addr ip
    addr="$(scontrol show node -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')"
    addr="${addr:-$1}"
    if [[ "$addr" =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then echo "$addr"; return 0; fi
    # Prefer a non-loopback address: 127.0.1.1 (Debian's /etc/hosts entry for the
    # machine's own name) is not reachable from any other host.
    ip="$(getent ahostsv4 "$addr" | awk '$1 !~ /^127\./ {print $1; exit}')"
    [[ -n "$ip" ]] || ip="$(getent ahostsv4 "$addr" | awk '{print $1; exit}')"
    [[ -n "$ip" ]] || { echo "ray_cluster: cannot resolve node $1 (NodeAddr=$addr)" >&2; return 1; }
    echo "$ip"
}

# _ray_alive_nodes -> number of alive Ray nodes the GCS knows (0 if it does not answer)
_ray_alive_nodes() {
    local status
    status="$(ray status --address="$RAY_HEAD_ADDR" 2>/dev/null)" || { echo 0; return 0; }
    # `ray status` lists one " 1 node_<id>" line per alive node between Active: and Pending:.
    awk '/^Active:/ {on = 1; next} /^(Pending|Recent failures):/ {on = 0} on && /node_/ {n++} END {print n + 0}' <<< "$status"
}

ray_cluster_up() {
    local job="${SLURM_JOB_ID:?ray_cluster_up must run inside a SLURM job}"
    local nodes i deadline n_alive
    mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"
    export RAY_PORT_BASE="${RAY_PORT_BASE:-$((20000 + 1000 * (job % 12)))}"
    export RAY_TMP_ROOT="${RAY_TMP_ROOT:-/tmp}"
    export RAY_HEAD_IP="${RAY_HEAD_IP:-$(ray_node_ip "${nodes[0]}")}"
    RAY_HEAD_ADDR="$RAY_HEAD_IP:$RAY_PORT_BASE"      # head slot 0: GCS port = base
    export RAY_HEAD_ADDR RAY_ADDRESS="$RAY_HEAD_ADDR"
    export RAY_DISABLE_USAGE_STATS=1

    # One random token per job; the file is created 600 before anything is written to it.
    export RAY_AUTH_MODE=token
    local token_dir="${RAY_TOKEN_DIR:-$HOME/.invattn/ray-tokens}"
    (umask 077 && mkdir -p "$token_dir")
    export RAY_AUTH_TOKEN_PATH="$token_dir/job-$job.token"
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
    unset RAY_AUTH_TOKEN   # a token in the environment would take precedence over the file
    # Stop files (see ray_cluster_down): $RAY_STOP_FILE.worker, then $RAY_STOP_FILE.head.
    export RAY_STOP_FILE="$token_dir/job-$job.stop"
    rm -f "$RAY_STOP_FILE".*

    invattn_log "ray: head ${nodes[0]} at $RAY_HEAD_ADDR, ${#nodes[@]} node(s): ${nodes[*]}"
    srun --overlap --nodes=1 --ntasks=1 --nodelist="${nodes[0]}" --job-name=ray-node-0 \
        bash "$INVATTN_ROOT/slurm/lib/ray_node.sh" head 0 &
    RAY_STEP_PIDS+=("$!")
    deadline=$((SECONDS + ${RAY_START_TIMEOUT:-180}))
    until [[ "$(_ray_alive_nodes)" -ge 1 ]]; do
        kill -0 "${RAY_STEP_PIDS[0]}" 2>/dev/null || { invattn_log "ray: head step exited"; return 1; }
        ((SECONDS < deadline)) || { invattn_log "ray: head not up after ${RAY_START_TIMEOUT:-180}s"; return 1; }
        sleep 2
    done
    for ((i = 1; i < ${#nodes[@]}; i++)); do
        srun --overlap --nodes=1 --ntasks=1 --nodelist="${nodes[i]}" --job-name="ray-node-$i" \
            bash "$INVATTN_ROOT/slurm/lib/ray_node.sh" worker "$i" &
        RAY_STEP_PIDS+=("$!")
    done
    while n_alive="$(_ray_alive_nodes)"; ((n_alive < ${#nodes[@]})); do
        for i in "${!RAY_STEP_PIDS[@]}"; do
            kill -0 "${RAY_STEP_PIDS[i]}" 2>/dev/null || { invattn_log "ray: step on ${nodes[i]} exited"; return 1; }
        done
        ((SECONDS < deadline)) || { invattn_log "ray: only $n_alive of ${#nodes[@]} nodes joined"; return 1; }
        sleep 2
    done
    invattn_log "ray: all ${#nodes[@]} node(s) joined"
    ray status --address="$RAY_HEAD_ADDR" || true
}

# _ray_wait_steps SECONDS PID... -> 0 once every given srun step has exited
_ray_wait_steps() {
    local i pid alive secs="$1"; shift
    for ((i = 0; i < secs * 5; i++)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.2
    done
    return 1
}

# _ray_stop_nodes ROLE PID... -> ask the nodes of ROLE to stop, wait, force if they hang
_ray_stop_nodes() {
    local role="$1" pid; shift
    (($#)) || return 0
    touch "$RAY_STOP_FILE.$role"
    _ray_wait_steps 40 "$@" && return 0
    invattn_log "ray: $role node(s) still up after 40 s; cancelling their steps"
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    _ray_wait_steps 20 "$@" && return 0
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

ray_cluster_down() {
    ((_RAY_DOWN_DONE)) && return 0
    _RAY_DOWN_DONE=1
    if ((${#RAY_STEP_PIDS[@]})); then
        invattn_log "ray: stopping ${#RAY_STEP_PIDS[@]} node(s)"
        # Each ray_node.sh polls for its stop file and then sends SIGTERM to
        # `ray start --block` alone, which drains and stops that node's raylet, object
        # store and agents (and GCS + dashboard on the head) in a few seconds, and removes
        # the node's temp dir.  Workers go first: a worker drains through the GCS, and waits
        # 30 s in vain if the head is already gone.  Not used: signalling the steps (SLURM
        # signals every Ray process of the step at once, and the drain then waits for a dead
        # raylet) or killing srun (cancels the step: SIGKILL, temp dirs left behind).
        _ray_stop_nodes worker "${RAY_STEP_PIDS[@]:1}"
        _ray_stop_nodes head "${RAY_STEP_PIDS[0]}"
        wait "${RAY_STEP_PIDS[@]}" 2>/dev/null || true
    fi
    [[ -z "${RAY_AUTH_TOKEN_PATH:-}" ]] || rm -f "$RAY_AUTH_TOKEN_PATH"
    [[ -z "${RAY_STOP_FILE:-}" ]] || rm -f "$RAY_STOP_FILE".*
    return 0
}

_ray_on_usr1() {
    _RAY_TIMED_OUT=1
    invattn_log "ray: time limit near (USR1): stopping the driver so that it saves its state"
    if [[ -n "$_RAY_DRIVER_PID" ]]; then
        kill -INT "$_RAY_DRIVER_PID" 2>/dev/null || true
    fi
}
_ray_on_term() {
    invattn_log "ray: job cancelled or preempted (TERM)"
    [[ -n "$_RAY_DRIVER_PID" ]] && kill -TERM "$_RAY_DRIVER_PID" 2>/dev/null
    ray_cluster_down
    exit 143
}

# ray_cluster_run CMD ARGS... -> the driver's exit status
ray_cluster_run() {
    local rc=0 i
    ((_RAY_TIMED_OUT)) && { invattn_log "ray: time limit reached before the driver started"; return 0; }
    # A background command of a non-interactive shell starts with SIGINT ignored, and
    # Python then never raises KeyboardInterrupt; restore the default so that SIGINT
    # reaches Ray Tune's handler (which saves the experiment state).
    (trap - INT; exec "$@") &
    _RAY_DRIVER_PID=$!
    # `wait` returns early (status > 128) when a trapped signal arrives; keep waiting for
    # the driver to finish saving, at most RAY_STOP_GRACE seconds after USR1.
    wait "$_RAY_DRIVER_PID" || rc=$?
    if ((_RAY_TIMED_OUT)); then
        for ((i = 0; i < ${RAY_STOP_GRACE:-45} * 5; i++)); do
            kill -0 "$_RAY_DRIVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -TERM "$_RAY_DRIVER_PID" 2>/dev/null || true
        rc=0; wait "$_RAY_DRIVER_PID" 2>/dev/null || rc=$?
    fi
    _RAY_DRIVER_PID=""
    return "$rc"
}

# ray_cluster_finish -> after the driver: tear down, and requeue if the time limit hit
ray_cluster_finish() {
    ray_cluster_down
    if ((_RAY_TIMED_OUT)) && [[ "${RAY_REQUEUE_ON_TIMEOUT:-1}" == 1 ]]; then
        invattn_log "ray: requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
        scontrol requeue "$SLURM_JOB_ID"
    fi
}

# ray_cluster_traps -> install the USR1 / TERM / EXIT handlers (call once, before _up)
ray_cluster_traps() {
    trap _ray_on_usr1 USR1
    trap _ray_on_term TERM INT
    trap ray_cluster_down EXIT
}
