#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying the submitit launcher and preemption locally.
#
#   sudo scripts/slurm_local.sh          # install (Debian/Ubuntu: slurm-wlm, munge) if missing, configure, start;
#                                        # returns once `sinfo` shows the node idle (idempotent: rerun at will)
#   sudo scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged
#   sudo scripts/slurm_local.sh status
#
# Then: linformer-train --multirun hydra/launcher=slurm_cpu experiment=smoke
#
# The node gets all CPUs of the machine and most of its memory; jobs run as the submitting user. Processes are
# tracked without cgroups (proctrack/linuxproc, task/none), so it also works in containers without systemd.
# An existing slurm.conf that this script did not write is never overwritten.
set -euo pipefail

CONF_DIR=/etc/slurm  # where sinfo, sbatch and the daemons look for slurm.conf
CONF=$CONF_DIR/slurm.conf
PARTITION=${SLURM_LOCAL_PARTITION:-local}
MARK="# written by linformer-pt scripts/slurm_local.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

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
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
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
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
    if [[ -e $CONF ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        return 1  # unchanged
    fi
    printf '%s\n' "$new" >"$CONF"
    say "wrote $CONF (node $host: $cpus CPUs, ${mem_mb} MB; partition $PARTITION)"
    return 0
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

start_daemon() {  # start_daemon <name> <pidfile>
    local name=$1 pidfile=$2
    if running "$pidfile"; then
        return
    fi
    "$name"
    for _ in $(seq 50); do
        running "$pidfile" && { say "started $name"; return; }
        sleep 0.2
    done
    die "$name did not start; see $LOGS/$name.log"
}

wait_idle() {
    local host state
    host=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n 1 || true)
        case $state in
            idle | mix | alloc)
                say "node $host is $state"
                sinfo
                return
                ;;
            down* | drain*)
                scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
                ;;
        esac
        sleep 1
    done
    die "node $host is not idle after 60 s (state: ${state:-unknown}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, writes $CONF and starts daemons)"
    install_packages
    local changed=0
    write_config && changed=1
    start_munge
    if ((changed)) && running "$CTLD_PID"; then  # a new configuration: restart what runs the old one
        stop_pid "$SLURMD_PID" slurmd
        stop_pid "$CTLD_PID" slurmctld
    fi
    start_daemon slurmctld "$CTLD_PID"
    start_daemon slurmd "$SLURMD_PID"
    wait_idle
}

stop() {
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
    stop_pid "$MUNGE_PID" munged
}

status() {
    local name pidfile
    for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        name=${pair%%:*}
        pidfile=${pair#*:}
        if running "$pidfile"; then say "$name running (pid $(cat "$pidfile"))"; else say "$name stopped"; fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
