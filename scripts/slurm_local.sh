#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the SLURM tests of the sweeps (CI runs it) and
# for trying `deepnmf-sweep run ... --executor slurm` without a cluster. Needs root (it writes
# /etc/slurm and starts daemons); the packages come from Debian (slurm-wlm, munge).
#
#   bash scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (if missing)
#   bash scripts/slurm_local.sh start     # munged, slurmctld, slurmd; partition "debug"
#   bash scripts/slurm_local.sh status
#   bash scripts/slurm_local.sh stop
#
# Accounting is off, so `sacct` fails (submitit then says "Bypassing sacct error"); job states come
# from `squeue` and from the jobs' own files. The node offers every CPU of the machine; memory is
# not a consumable resource (CR_Core), so jobs are placed by cores alone.
set -euo pipefail

install() {
  if command -v sbatch >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
  if scontrol ping 2>/dev/null | grep -q "is UP"; then echo "SLURM is already up"; return; fi
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  if [ ! -f /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 400 /etc/munge/munge.key
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(free -m | awk '/Mem:/{print $2}') - 1024))
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=root
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
  slurmctld
  slurmd
  for _ in $(seq 60); do
    if sinfo --noheader --states=idle,mix 2>/dev/null | grep -q debug; then
      sinfo
      return
    fi
    sleep 1
  done
  echo "SLURM did not come up; see /var/log/slurm/" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
}

stop() {
  scontrol shutdown 2>/dev/null || true
  for _ in $(seq 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.5
  done
  if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
