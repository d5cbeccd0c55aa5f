#!/usr/bin/env bash
# A real, single-machine SLURM development cluster for the tests and for trying the
# sbatch scripts in slurm/ before using them on a site cluster.
#
#   bash slurm/dev-cluster.sh up       # install (if missing), configure, start, wait until idle
#   bash slurm/dev-cluster.sh status   # daemons, sinfo, squeue; exit 0 only if all is up
#   bash slurm/dev-cluster.sh down     # stop slurmd x2, slurmctld and munged
#   bash slurm/dev-cluster.sh restart  # down, then up
#
# What `up` sets up (Debian 12 `slurm-wlm` 22.05 + `munge`, as root, no systemd):
#   - a munge key (created if absent) and `munged`;
#   - /etc/slurm/slurm.conf rendered from slurm/conf/slurm.conf.in: two virtual compute
#     nodes n1 and n2 on this machine (one CPU each, own slurmd port), so that
#     `sbatch --nodes=2` gets one task on each of two nodes;
#   - `slurmctld`, `slurmd -N n1`, `slurmd -N n2`; then it waits (bounded) until both
#     nodes are idle.
# Idempotent: with everything already running and the config unchanged, `up` only checks
# and returns.  A changed template is written and the daemons restarted.  A slurm.conf not
# written by this script is never overwritten (set DEV_CLUSTER_FORCE=1 to replace it).
# Accounting is off (no slurmdbd): `sacct` fails, which is expected here.
# Requeue: SLURM holds a requeued job until the old run's credential revocation expires; the
# template sets AuthInfo=cred_expire=15 (Slurm's minimum is 5), so the hold is ~16 s, not 121 s.
# Do not release a requeued job early (`scontrol update StartTime=now`): its new run may then be
# killed at launch ("Job credential revoked").  sweeps/slurm_wait.py waits on jobs without
# waiting forever (a job gone without its result fails at once with its log tail).
#
# Environment (all optional):
#   SLURM_CONF            config path (default /etc/slurm/slurm.conf; the clients read it too)
#   DEV_CLUSTER_TIMEOUT   seconds to wait for the nodes (default 90)
#   DEV_CLUSTER_CTLD_PORT slurmctld port (default 6817); DEV_CLUSTER_NODE_PORTS "17001 17002"
#   DEV_CLUSTER_FORCE=1   replace a slurm.conf that this script did not write
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd-n1.log, ..., /var/log/munge/munged.log
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/conf/slurm.conf.in"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
MARKER="invattn-dev-cluster"          # a slurm.conf containing this was written by us
NODES=(n1 n2)
read -r -a NODE_PORTS <<< "${DEV_CLUSTER_NODE_PORTS:-17001 17002}"
CTLD_PORT="${DEV_CLUSTER_CTLD_PORT:-6817}"
TIMEOUT="${DEV_CLUSTER_TIMEOUT:-90}"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
LOG_DIR=/var/log/slurm

log() { echo "dev-cluster: $*"; }
die() { echo "dev-cluster: error: $*" >&2; exit 1; }

# --- process helpers (pid files only: we never signal processes we did not start) -----
pid_alive() {  # pid_alive PIDFILE -> 0 if the process in PIDFILE runs
    local pid
    pid="$(tr -dc '0-9' 2>/dev/null < "$1")" || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}
wait_gone() {  # wait_gone PIDFILE SECONDS -> 0 once the process has exited
    local i
    for ((i = 0; i < $2 * 5; i++)); do pid_alive "$1" || return 0; sleep 0.2; done
    return 1
}
stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM, wait, then KILL
    pid_alive "$1" || return 0
    local pid; pid="$(tr -dc '0-9' 2>/dev/null < "$1")" || return 0
    [[ -n "$pid" ]] || return 0
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$1" 15 && return 0
    log "$2 did not stop in 15 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$1" 5 || die "$2 (pid $pid) survives SIGKILL"
}
slurmd_pidfile() { echo "/run/slurmd-$1.pid"; }

# --- install ----------------------------------------------------------------------------
install_packages() {
    local missing=0 cmd
    for cmd in munged slurmctld slurmd sbatch sinfo; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is missing (Debian/Ubuntu only)"
    log "installing slurm-wlm and munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold slurm-wlm munge >/dev/null
}

# --- munge ------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
start_munge() {
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 700 /etc/munge
        (umask 277 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chown munge:munge "$MUNGE_KEY"; chmod 400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    if pid_alive "$MUNGE_PID" && munge_ok; then return 0; fi
    log "starting munged"
    # munged refuses to run as root; the Debian package's user is `munge`.
    runuser -u munge -- munged
    local i
    for ((i = 0; i < 50; i++)); do munge_ok && return 0; sleep 0.2; done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

# --- slurm.conf ---------------------------------------------------------------------------
render_conf() {  # render_conf OUT
    local host mem_mb
    host="$(hostname -s)"
    # Each virtual node advertises half the machine's memory (memory is not a consumable
    # resource with CR_CPU; this only bounds what a job may ask for with --mem).
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024 / 2)}' /proc/meminfo)"
    sed -e "s/@@HOSTNAME@@/$host/g" -e "s/@@CTLD_PORT@@/$CTLD_PORT/g" \
        -e "s/@@N1_PORT@@/${NODE_PORTS[0]}/g" -e "s/@@N2_PORT@@/${NODE_PORTS[1]}/g" \
        -e "s/@@MEM_MB@@/$mem_mb/g" -e "s/@@MARKER@@/$MARKER/g" "$TEMPLATE" > "$1"
}
write_conf() {  # write_conf: render the template; replace $CONF (daemons stopped first) if it differs
    [[ -r "$TEMPLATE" ]] || die "template $TEMPLATE not found"
    install -d -m 755 "$(dirname "$CONF")"
    local tmp; tmp="$(mktemp "$CONF.XXXXXX")"
    render_conf "$tmp"
    if [[ -e "$CONF" ]] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return 0; fi
    if [[ -e "$CONF" ]] && ! grep -q "$MARKER" "$CONF" && [[ "${DEV_CLUSTER_FORCE:-0}" != 1 ]]; then
        rm -f "$tmp"
        die "$CONF exists and was not written by this script; refusing to replace it (DEV_CLUSTER_FORCE=1 overrides)"
    fi
    # Node definitions and ports only take effect on a restart, and the running daemons
    # must be stopped through the config they were started with.
    if [[ -e "$CONF" ]] && { ctld_ok || any_slurmd_alive; }; then
        log "config changed: restarting the SLURM daemons"
        stop_slurm
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"   # atomic: no daemon or client ever reads a half-written file
    log "wrote $CONF"
}

# --- slurm daemons --------------------------------------------------------------------------
ctld_ok() { pid_alive "$CTLD_PID" && scontrol ping 2>/dev/null | grep -q 'is UP'; }
start_slurm() {
    install -d -m 755 "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    local n i
    if ! ctld_ok; then
        log "starting slurmctld"
        slurmctld -f "$CONF"
        for ((i = 0; i < 100; i++)); do ctld_ok && break; sleep 0.2; done
        ctld_ok || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
    fi
    for n in "${NODES[@]}"; do
        install -d -m 755 "/var/spool/slurmd/$n"
        pid_alive "$(slurmd_pidfile "$n")" && continue
        log "starting slurmd -N $n"
        slurmd -f "$CONF" -N "$n"
    done
}
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }
wait_nodes_up() {
    local deadline=$((SECONDS + TIMEOUT)) states bad resumed=0
    while :; do
        states="$(node_states)"
        # Usable: idle / mixed / allocated / completing, and not flagged unresponsive (*).
        bad="$(awk '$2 !~ /^(idle|mixed|allocated|completing)$/ {print $1}' <<< "$states")"
        if [[ -n "$states" && -z "$bad" ]]; then
            log "nodes up: $(tr '\n' ' ' <<< "$states")"
            return 0
        fi
        # A node drained by an earlier crash stays DRAIN even with ReturnToService=2.
        if ((!resumed)) && grep -Eq 'drain|down' <<< "$states" && ! grep -q '\*' <<< "$states"; then
            scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME 2>/dev/null || true
            resumed=1
        fi
        ((SECONDS < deadline)) || die "nodes not idle after ${TIMEOUT}s: $(tr '\n' ' ' <<< "$states") (see $LOG_DIR/)"
        sleep 1
    done
}

# --- commands --------------------------------------------------------------------------------
cmd_up() {
    [[ $EUID -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    install_packages
    start_munge
    write_conf
    start_slurm
    wait_nodes_up
}
any_slurmd_alive() {
    local n; for n in "${NODES[@]}"; do pid_alive "$(slurmd_pidfile "$n")" && return 0; done; return 1
}
stop_slurm() {
    local n
    # `scontrol shutdown` stops slurmctld and every registered slurmd cleanly (state saved).
    if ctld_ok; then scontrol shutdown >/dev/null 2>&1 || true; fi
    wait_gone "$CTLD_PID" 15 || true
    for n in "${NODES[@]}"; do wait_gone "$(slurmd_pidfile "$n")" 5 || true; done
    stop_pidfile "$CTLD_PID" slurmctld
    for n in "${NODES[@]}"; do stop_pidfile "$(slurmd_pidfile "$n")" "slurmd -N $n"; done
}
cmd_down() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    stop_slurm
    if pid_alive "$MUNGE_PID"; then
        log "stopping munged"
        runuser -u munge -- munged --stop >/dev/null 2>&1 || true
        wait_gone "$MUNGE_PID" 10 || stop_pidfile "$MUNGE_PID" munged
    fi
    log "down"
}
cmd_status() {
    local rc=0 n
    if pid_alive "$MUNGE_PID" && munge_ok; then log "munged: up"; else log "munged: DOWN"; rc=3; fi
    if ctld_ok; then log "slurmctld: up ($(scontrol ping 2>/dev/null | head -1))"; else log "slurmctld: DOWN"; rc=3; fi
    for n in "${NODES[@]}"; do
        if pid_alive "$(slurmd_pidfile "$n")"; then log "slurmd -N $n: up"; else log "slurmd -N $n: DOWN"; rc=3; fi
    done
    if ((rc == 0)); then
        sinfo -N -o '%N %P %T %c %m %E' || rc=3
        squeue || rc=3
    fi
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    restart) cmd_down; cmd_up ;;
    *) echo "usage: $0 up|down|status|restart" >&2; exit 2 ;;
esac
