#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (localhost) for the integration test.
#
#   sudo bash tests/integration/start_slurm.sh            # install (apt) if needed, then start
#   sudo bash tests/integration/start_slurm.sh --no-install
#
# What it does, as a sysadmin would on a one-node cluster:
#   1. apt-get install slurm-wlm munge (skipped when the daemons are already installed);
#   2. a munge key (the package makes one; created if missing) and munged;
#   3. /etc/slurm/slurm.conf for NodeName=localhost with this machine's real CPU count and
#      memory (from `slurmd -C`), ProctrackType=proctrack/linuxproc, TaskPlugin=task/none
#      (no cgroups in containers), SelectType=select/cons_tres, accounting disabled, so the
#      Snakemake SLURM plugin must poll with `squeue` (MinJobAge keeps finished jobs visible);
#   4. one stand-in GPU (GRES with /dev/null as its device file) so that rules asking `--gpus=1` are
#      scheduled as on a GPU cluster; the job itself finds no CUDA and runs on CPU;
#   5. slurmctld and slurmd as root, then waits until the node is idle.
# Exit status 0 means `sbatch` works. Pids are in /run/slurmctld.pid, /run/slurmd.pid and
# /run/munge/munged.pid; tests/integration/stop_slurm.sh stops them.
set -euo pipefail

install=1
[[ "${1:-}" == "--no-install" ]] && install=0

log() { echo "start_slurm: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (daemons, /etc/slurm)"
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    if [[ $install -eq 0 ]]; then
        log "slurm-wlm/munge not installed and --no-install given"
        exit 1
    fi
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge -------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# --- slurm.conf ----------------------------------------------------------------------
MARK="# written by brainage-rnc tests/integration/start_slurm.sh"
CONF=/etc/slurm/slurm.conf
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and was not written by this script: using it unchanged"
else
    # The node's real size: `slurmd -C` prints what slurmd itself will detect.
    hw=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
    cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
    threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$CONF" <<EOF
$MARK
# Single-node test cluster; see the script for why each setting.
ClusterName=brainage-ci
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue (and scontrol) for an hour: the plugin's status polling needs that
# without accounting (it requires MinJobAge >= 3 x its first status-check delay).
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/gres.conf <<EOF
$MARK
# One stand-in GPU: slurmd counts GPUs by device file, /dev/null makes it schedulable;
# jobs see CUDA_VISIBLE_DEVICES but no CUDA driver, so the code runs on CPU.
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF
fi

# --- daemons -------------------------------------------------------------------------
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld -c      # -c: clean start, no job state from a previous run
fi
if ! alive /run/slurmd.pid; then
    log "starting slurmd"
    slurmd -N localhost
fi

for _ in $(seq 60); do
    if scontrol ping 2>/dev/null | grep -q UP; then
        state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        case $state in
            idle|mix|alloc) break ;;
            down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
        esac
    fi
    sleep 1
done
state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
if [[ $state != idle && $state != mix && $state != alloc ]]; then
    log "node did not come up (state '$state'); last slurmctld/slurmd log lines:"
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
fi
log "single-node SLURM up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m gres=%G')"
