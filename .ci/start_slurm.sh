#!/usr/bin/env bash
# A single-node SLURM on this machine, for the slurm tests (pytest -m slurm): munge and SLURM from Debian's
# packages, this host (all its cores, 3/4 of its memory) the one node of partition "cpu". Idempotent: an
# answering SLURM is left as it is, and only what is missing is installed, written or started.
# Exit status 0 once partition "cpu" has a node up; otherwise 1, with a one-line reason on stderr.
set -euo pipefail

PARTITION=cpu
CONF=/etc/slurm/slurm.conf
MARK="# written by wsi_pipeline's .ci/start_slurm.sh"
HOST=$(hostname -s)

say() { echo "start_slurm: $*" >&2; }
fail() {
    say "$*"
    exit 1
}
partition_up() { sinfo -h -p "$PARTITION" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

if command -v sinfo >/dev/null && partition_up; then
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

# slurm.conf: written when missing or ours (then brought up to date); someone else's is left alone
if [ ! -e "$CONF" ] || grep -qF "$MARK" "$CONF"; then
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    memory_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 3 / 4096))
    cat >"$CONF.new" <<EOF
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
NodeName=$HOST CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        if pgrep -x slurmctld >/dev/null; then scontrol reconfigure || true; fi
    fi
fi

pgrep -x slurmctld >/dev/null || slurmctld
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
