#!/usr/bin/env bash
# A real one-machine Slurm cluster (munge + slurmctld + slurmd, no systemd) for tests and laptops.
#   sudo slurm/local/cluster.sh install   # Debian packages slurm-wlm and munge
#   sudo slurm/local/cluster.sh start     # write /etc/slurm/slurm.conf for this host, start daemons
#   slurm/local/cluster.sh status         # prints the node state (idle when ready)
#   sudo slurm/local/cluster.sh stop
# Partition `debug` holds this machine; jobs get 4 GB per CPU unless they ask for more.
set -euo pipefail

HOST=$(hostname)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
CONF_DIR=/etc/slurm

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_conf() {
  mkdir -p "$CONF_DIR" /run/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=4000
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  pgrep -x munged >/dev/null && return 0
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  setsid runuser -u munge -- /usr/sbin/munged -F >/var/log/munge/stdout.log 2>&1 < /dev/null &
  for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && return 0; sleep 0.1; done
  echo "munged did not start; see /var/log/munge" >&2; return 1
}

start() {
  install
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || setsid /usr/sbin/slurmctld -D >/var/log/slurm/slurmctld.out 2>&1 < /dev/null &
  pgrep -x slurmd >/dev/null || setsid /usr/sbin/slurmd -D >/var/log/slurm/slurmd.out 2>&1 < /dev/null &
  for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    case "$state" in idle*|mixed*|allocated*) echo "slurm ready on ${HOST}: ${state}"; return 0 ;; esac
    sleep 0.2
  done
  echo "slurm did not become ready (state: ${state:-none}); see /var/log/slurm" >&2
  return 1
}

stop() {
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
}

status() { sinfo -h -o "%P %T %c %m" 2>/dev/null || { echo "not running"; return 1; }; }

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
