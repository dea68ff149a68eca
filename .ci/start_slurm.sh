#!/usr/bin/env bash
# A single-node SLURM on this machine, for the slurm tests (pytest -m slurm): munge and SLURM from Debian's
# packages, this host (all its cores, 3/4 of its memory, two GPU slots) the one node of partition "cpu".
# (Cores from getconf: nproc answers OMP_NUM_THREADS, which Dask sets in the processes that start workers.)
# The GPU slots have no devices behind them (gres without File): a job asking --gres=gpu:N gets N slots, so
# the layout of GPU jobs can be tested on a machine without GPUs.
# Idempotent: a SLURM that answers is left as it is (ours only brought up to date), and only what is missing
# is installed, written or started. Exit status 0 once partition "cpu" has a node up; otherwise 1, with a
# one-line reason on stderr.
set -euo pipefail

PARTITION=cpu
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by wsi_pipeline's .ci/start_slurm.sh"
HOST=$(hostname -s)

say() { echo "start_slurm: $*" >&2; }
fail() {
    say "$*"
    exit 1
}
partition_up() { sinfo -h -p "$PARTITION" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

slurm_conf() {
    cat <<EOF
$MARK
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
GresTypes=gpu
NodeName=$HOST CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 3 / 4096)) Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

gres_conf() {
    printf '%s\nNodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$MARK" "$HOST" "$HOST"
}

# ours: written by this script (or not written yet); someone else's configuration is left alone
ours() { [ ! -e "$CONF" ] || grep -qF "$MARK" "$CONF"; }
outdated() { ! slurm_conf | cmp -s - "$CONF" || ! gres_conf | cmp -s - "$GRES_CONF"; }

if command -v sinfo >/dev/null && partition_up && ! { ours && outdated; }; then
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "not root: cannot install or start SLURM"

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "no apt-get: cannot install slurm-wlm and munge"
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: SLURM's authentication, a key readable by the munge user alone
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom >/etc/munge/munge.key
chown -R munge: /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
fi

stop() { # the daemon of pid file $1, if it runs, and wait for it to end
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
}

if ours && outdated; then
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    slurm_conf >"$CONF"
    gres_conf >"$GRES_CONF"
    # node and gres changes need the daemons started afresh
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi

if ! pgrep -x slurmctld >/dev/null; then
    # ours starts without the jobs of an earlier life (-c): a test SLURM holds nothing worth keeping
    if ours; then slurmctld -c; else slurmctld; fi
fi
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
    partition_up && exit 0
    # a node SLURM set down (e.g. after this machine restarted) is taken back
    if sinfo -h -n "$HOST" -o %t 2>/dev/null | grep -qE '^(down|drain|drng)'; then
        scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    fi
    sleep 0.5
done
fail "partition $PARTITION has no node up after 30 s: $(sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ' ')"
