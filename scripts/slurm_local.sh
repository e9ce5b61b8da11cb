#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying the submitit launcher and preemption locally.
#
#   sudo scripts/slurm_local.sh          # install (Debian/Ubuntu: slurm-wlm, munge) if missing, configure, start;
#                                        # returns once `sinfo` shows the node idle (idempotent: rerun at will)
#   sudo scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged
#   sudo scripts/slurm_local.sh status
#   sudo SLURM_LOCAL_NODES=2 scripts/slurm_local.sh   # two nodes on this machine instead (see below)
#
# Then: linformer-train --multirun hydra/launcher=slurm_cpu experiment=smoke
#
# The node gets all CPUs of the machine and most of its memory; jobs run as the submitting user. Processes are
# tracked without cgroups (proctrack/linuxproc, task/none), so it also works in containers without systemd.
#
# SLURM_LOCAL_NODES=N (N > 1) runs N slurmd daemons on this machine, one per node, in Slurm's multiple-slurmd mode
# (Debian's slurm-wlm is built with it: `scontrol show config` says MULTIPLE_SLURMD = Yes). The nodes are named
# localnode1..N and listen on 127.0.0.1 ports 17001..17000+N. They share the machine: each offers all its CPUs
# (a 2-task job still fits on one node; N nodes oversubscribe the cores N times) and 1/N of its memory. The names
# are added to /etc/hosts as 127.0.0.1 aliases, so that a job's first node name (submitit's MASTER_ADDR) resolves.
# A 2-node job:
#   linformer-train --multirun hydra/launcher=slurm_cpu hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=1 \
#       experiment=smoke
# Running the script again with another SLURM_LOCAL_NODES rewrites slurm.conf and restarts the daemons.
# An existing slurm.conf that this script did not write is never overwritten.
set -euo pipefail

CONF_DIR=/etc/slurm  # where sinfo, sbatch and the daemons look for slurm.conf
CONF=$CONF_DIR/slurm.conf
PARTITION=${SLURM_LOCAL_PARTITION:-local}
NODES=${SLURM_LOCAL_NODES:-1}
MARK="# written by linformer-pt scripts/slurm_local.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid  # one node; with several: /run/slurmd-<node>.pid
MUNGE_PID=/run/munge/munged.pid
HOSTS_MARK="# linformer-pt scripts/slurm_local.sh: local Slurm nodes"
FIRST_PORT=17001

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_NODES must be a positive number, not '$NODES'"

node_names() {  # the node names slurm.conf gets: the host itself, or localnode1..N
    if ((NODES == 1)); then hostname -s; else seq -f 'localnode%g' "$NODES"; fi
}

slurmd_pidfile() {  # slurmd_pidfile <node>
    if ((NODES == 1)); then echo "$SLURMD_PID"; else echo "/run/slurmd-$1.pid"; fi
}

running() {  # running <pidfile>: the process named in the pid file is alive
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {  # stop_pid <pidfile> <name>: SIGTERM, then wait up to 10 s
    local pidfile=$1 name=$2 pid
    if ! running "$pidfile"; then
        say "$name is not running"
        return
    fi
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $name (pid $pid)"; return; }
        sleep 0.2
    done
    die "$name (pid $pid) did not stop within 10 s"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sinfo >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munged missing and no apt-get: install Slurm and MUNGE"
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # Leave 10% (at least 512 MB) of the memory to the system; mem_gb requests are checked against the rest.
    mem_mb=$(awk '/^MemTotal:/ { m = int($2 / 1024); r = int(m / 10); print m - (r < 512 ? 512 : r) }' /proc/meminfo)
    local spool=$SPOOL pidfile=$SLURMD_PID logfile=$LOGS/slurmd.log nodes partition_nodes=$host
    nodes="NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    if ((NODES > 1)); then  # multiple-slurmd: %n is the node name of each slurmd
        spool=$SPOOL/%n pidfile=/run/slurmd-%n.pid logfile=$LOGS/slurmd-%n.log nodes=""
        # Each node gets all the CPUs (they share them: a one-node job of the slurm_cpu launcher's two tasks still
        # fits on one node) and 1/N of the memory.
        mem_mb=$((mem_mb / NODES))
        for i in $(seq "$NODES"); do
            nodes+="NodeName=localnode$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((FIRST_PORT + i - 1))"
            nodes+=" CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"$'\n'
        done
        nodes=${nodes%$'\n'} partition_nodes="localnode[1-$NODES]"
    fi
    if [[ -e $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
    local new
    new=$(cat <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$pidfile
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$logfile
# No cgroups: track job processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs and memory are consumable: two 1-CPU tasks fill a 2-CPU node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Preemption tests: jobs may be requeued (scontrol requeue, or a job requeueing itself on a signal); a job
# gets SIGTERM and KillWait seconds to write its checkpoint before SIGKILL.
JobRequeue=1
KillWait=10
# A node that went down (e.g. slurmd restarted) comes back by itself.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
SchedulerType=sched/backfill
$nodes
PartitionName=$PARTITION Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
    if [[ -e $CONF ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        return 1  # unchanged
    fi
    printf '%s\n' "$new" >"$CONF"
    if ((NODES == 1)); then
        say "wrote $CONF (node $host: $cpus CPUs, ${mem_mb} MB; partition $PARTITION)"
    else
        say "wrote $CONF ($NODES nodes $partition_nodes: $cpus CPUs, ${mem_mb} MB each; partition $PARTITION)"
    fi
    return 0
}

write_hosts() {  # several nodes: their names resolve to 127.0.0.1 (a job's first node is its MASTER_ADDR)
    local line
    line="127.0.0.1 $(node_names | tr '\n' ' ')$HOSTS_MARK"
    grep -qxF "$line" /etc/hosts && return
    # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replace the file.
    local rest
    rest=$(grep -vF "$HOSTS_MARK" /etc/hosts || true)
    printf '%s\n%s\n' "$rest" "$line" >/etc/hosts
    say "added $(node_names | tr '\n' ' ')to /etc/hosts (127.0.0.1)"
}

check_multiple_slurmd() {  # asks slurmctld, which may take a few seconds to answer after its start
    local config=""
    for _ in $(seq 30); do
        config=$(scontrol show config 2>/dev/null) && break
        sleep 1
    done
    [[ -n $config ]] || die "slurmctld does not answer (scontrol show config); see $LOGS/slurmctld.log"
    grep -qE '^MULTIPLE_SLURMD +=  *Yes' <<<"$config" \
        || die "this Slurm build has no multiple-slurmd support (scontrol show config: MULTIPLE_SLURMD is not Yes): \
SLURM_LOCAL_NODES > 1 needs Slurm configured with --enable-multiple-slurmd"
}

slurmd_pidfiles() {  # every slurmd pid file there is (one node or several)
    local f
    for f in "$SLURMD_PID" /run/slurmd-*.pid; do [[ -e $f ]] && echo "$f"; done
    return 0
}

stop_slurmds() {
    local f found=0
    for f in $(slurmd_pidfiles); do
        found=1
        if [[ $f == "$SLURMD_PID" ]]; then stop_pid "$f" slurmd; else stop_pid "$f" "$(basename "$f" .pid)"; fi
    done
    ((found)) || say "slurmd is not running"
}

start_munge() {
    if running "$MUNGE_PID"; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge  # clients (every user) reach the socket through it
    runuser -u munge -- munged
    say "started munged"
}

start_daemon() {  # start_daemon <name> <pidfile> [args...]
    local name=$1 pidfile=$2
    shift 2
    if running "$pidfile"; then
        return
    fi
    "$name" "$@"
    for _ in $(seq 50); do
        running "$pidfile" && { say "started $name${*:+ $*}"; return; }
        sleep 0.2
    done
    die "$name${*:+ $*} did not start; see $LOGS/$name*.log"
}

wait_idle() {
    local host state waiting
    for host in $(node_names); do
        waiting=1
        for _ in $(seq 60); do
            state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n 1 || true)
            case $state in
                idle | mix | alloc)
                    say "node $host is $state"
                    waiting=0
                    break
                    ;;
                down* | drain*)
                    scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
                    ;;
            esac
            sleep 1
        done
        ((waiting == 0)) || die "node $host is not idle after 60 s (state: ${state:-unknown});" \
            "see $LOGS/slurmctld.log and $LOGS/slurmd*.log"
    done
    sinfo
}

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, writes $CONF and starts daemons)"
    install_packages
    local changed=0
    write_config && changed=1
    start_munge
    if ((changed)) && running "$CTLD_PID"; then  # a new configuration: restart what runs the old one
        stop_slurmds
        stop_pid "$CTLD_PID" slurmctld
    fi
    ((NODES == 1)) || write_hosts
    start_daemon slurmctld "$CTLD_PID"
    if ((NODES == 1)); then
        start_daemon slurmd "$SLURMD_PID"
    else
        check_multiple_slurmd
        local node
        for node in $(node_names); do
            mkdir -p "$SPOOL/$node"
            start_daemon slurmd "$(slurmd_pidfile "$node")" -N "$node"
        done
    fi
    wait_idle
}

stop() {
    stop_slurmds
    stop_pid "$CTLD_PID" slurmctld
    stop_pid "$MUNGE_PID" munged
}

status() {
    local name pidfile
    for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" $(for f in $(slurmd_pidfiles); do
        if [[ $f == "$SLURMD_PID" ]]; then echo "slurmd:$f"; else echo "$(basename "$f" .pid):$f"; fi; done); do
        name=${pair%%:*}
        pidfile=${pair#*:}
        if running "$pidfile"; then say "$name running (pid $(cat "$pidfile"))"; else say "$name stopped"; fi
    done
    [[ -n $(slurmd_pidfiles) ]] || say "slurmd stopped"
    sinfo 2>/dev/null || true
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
