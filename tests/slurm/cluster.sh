#!/bin/bash
# A real Slurm 22.05 test cluster on this host, from Debian's packages (see ../shared/
# slurm-recipe.md for why each line is here):
#   4 nodes n1..n4 (4 slurmd processes, multiple-slurmd), 2 fake GPUs each (char devices
#   195:0/195:1), accounting (MariaDB + slurmdbd), users alice/bob, the jobenergy SPANK
#   plugin and Prolog/Epilog/PrologSlurmctld/EpilogSlurmctld hooks.
#
#   tests/slurm/cluster.sh up       install what is missing, (re)start, wait for 4 idle nodes
#   tests/slurm/cluster.sh down     stop every daemon this script started (by PID file)
#   tests/slurm/cluster.sh status   print daemons and sinfo; exit 1 if the cluster is not up
#
# Needs root on a Debian 12 test machine (cgroup v1 or hybrid; CI machines are fresh). It
# writes /etc/slurm/{slurm,slurmdbd,cgroup,gres}.conf, /etc/slurm/plugstack.conf.d/
# jobenergy.conf, /etc/slurm/jobenergy/ (hooks), /etc/jobenergy/slurm-hooks.env (only when
# missing; the test rewrites it), /usr/local/lib/slurm/spank_jobenergy.so,
# /var/lib/fakegpu/nvidia[01], PID files in /run/slurm. Do not run it on a real cluster.
# Environment: NODES (4), GPUS (2), CLUSTER (testcluster), JOBENERGY_HOOK_URL.
set -euo pipefail
NODES=${NODES:-4}; GPUS=${GPUS:-2}; CLUSTER=${CLUSTER:-testcluster}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUN=/run/slurm
LOG=/var/log/slurm
PKGS="munge slurmctld slurmd slurm-client libslurm-dev slurmdbd slurm-wlm-mysql-plugin
      mariadb-server gcc libc6-dev make curl bsdutils util-linux procps"
T0=$(date +%s.%N)
stamp() { printf '[cluster.sh %5.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc 2>/dev/null || echo 0)" "$*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

stop_pidfile() {
  local f=$1 p i
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_slurm() {
  # SIGTERM every slurmd at once (each takes ~2 s to exit), then wait for each.
  local f p
  for f in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid"; do
    [ -s "$f" ] && p=$(cat "$f") && kill "$p" 2>/dev/null || true
  done
  for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
  stop_pidfile "$RUN/slurmctld.pid"
}

install_packages() {
  local missing=() p
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  command -v bc >/dev/null || missing+=(bc)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "cluster.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/tmp/cluster-apt.log 2>&1 || { tail -20 /tmp/cluster-apt.log; die "apt-get update failed"; }
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/cluster-apt.log 2>&1 \
    || { tail -20 /tmp/cluster-apt.log; die "apt-get install failed (log: /tmp/cluster-apt.log)"; }
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munge does not work"
}

write_config() {
  local hw realmem node_mem
  hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //; s/ RealMemory=.*//')
  realmem=$(slurmd -C | head -1 | sed 's/.*RealMemory=\([0-9]*\).*/\1/')
  node_mem=$(( (realmem - 1024) / NODES ))
  mkdir -p /etc/slurm/plugstack.conf.d /var/spool/slurmctld /var/spool/slurmd "$LOG" "$RUN" /var/lib/fakegpu
  chown slurm:slurm /var/spool/slurmctld "$LOG" "$RUN"
  local i
  for i in $(seq 0 $((GPUS - 1))); do
    [ -c /var/lib/fakegpu/nvidia$i ] || { rm -f /var/lib/fakegpu/nvidia$i; mknod /var/lib/fakegpu/nvidia$i c 195 $i; }
  done
  cat > /etc/slurm/slurm.conf <<CONF
# Written by jobenergy tests/slurm/cluster.sh (test cluster; do not use in production).
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=300
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=10
PrologFlags=Alloc,Contain
Prolog=/etc/slurm/jobenergy/prolog.sh
Epilog=/etc/slurm/jobenergy/epilog.sh
PrologSlurmctld=/etc/slurm/jobenergy/prolog_slurmctld.sh
EpilogSlurmctld=/etc/slurm/jobenergy/epilog_slurmctld.sh
# Submit-time budgets: /etc/slurm/job_submit.lua, from `jobenergy setup slurm-hooks`.
JobSubmitPlugins=lua
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
NodeName=n[1-$NODES] NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=17001-$((17000 + NODES)) $hw RealMemory=$node_mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat > /etc/slurm/cgroup.conf <<'CONF'
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=yes
CONF
  printf 'AutoDetect=off\nNodeName=n[1-%d] Name=gpu File=/var/lib/fakegpu/nvidia[0-%d]\n' "$NODES" $((GPUS - 1)) > /etc/slurm/gres.conf
  cat > /etc/slurm/slurmdbd.conf <<'CONF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 0600 /etc/slurm/slurmdbd.conf
}

install_jobenergy() {
  # As deploy/INSTALL.md installs a controller and compute node: one `jobenergy setup
  # slurm-hooks` (hook scripts, outbox, SPANK plugin and its plugstack line). --force: the
  # live test rewrites slurm-hooks.env for its own server, and this puts the shipped one back.
  local jobenergy=${JOBENERGY:-$REPO/.venv/bin/jobenergy}
  [ -x "$jobenergy" ] || die "$jobenergy missing: run make test (or set JOBENERGY)"
  "$jobenergy" setup slurm-hooks --force --url "${JOBENERGY_HOOK_URL:-http://127.0.0.1:8080}" \
    --cluster "$CLUSTER" --slurm-user slurm >/tmp/cluster-setup.log 2>&1 \
    || { cat /tmp/cluster-setup.log; die "jobenergy setup slurm-hooks failed"; }
}

start_db() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! mariadb-admin ping >/dev/null 2>&1; then
    nohup mariadbd --user=mysql --bind-address=127.0.0.1 >"$LOG/mariadbd.log" 2>&1 &
    echo $! > "$RUN/mariadbd.pid"
  fi
  local i
  for i in $(seq 1 120); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.25; done
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || die "MariaDB did not start (log: $LOG/mariadbd.log)"
  if ! { [ -s "$RUN/slurmdbd.pid" ] && kill -0 "$(cat "$RUN/slurmdbd.pid")" 2>/dev/null; }; then
    slurmdbd
  fi
  for i in $(seq 1 120); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.25; done
  sacctmgr -n show cluster >/dev/null 2>&1 || die "slurmdbd did not answer (log: $LOG/slurmdbd.log)"
  if ! sacctmgr -n -P show user alice 2>/dev/null | grep -q alice; then
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account proj1,proj2 Description=test Organization=test >/dev/null 2>&1 || true
    sacctmgr -i -Q add user alice Account=proj1,proj2 DefaultAccount=proj1 >/dev/null 2>&1 || true
    sacctmgr -i -Q add user bob Account=proj2 >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root Account=proj1 >/dev/null 2>&1 || true
  fi
}

wait_nodes() {
  # sinfo alone can say idle for a node recovered from saved state before its slurmd
  # registered: require a SlurmdStartTime from this start.
  local since=$1 i n ok t
  for i in $(seq 1 160); do
    ok=0
    for n in $(seq 1 "$NODES"); do
      t=$(scontrol show node "n$n" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
      st=$(sinfo -h -n "n$n" -o %T 2>/dev/null || true)
      if [ -n "$t" ] && [ "$t" != None ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge "$since" ] && [ "$st" = idle ]; then
        ok=$((ok + 1))
      fi
    done
    [ "$ok" = "$NODES" ] && return 0
    sleep 0.25
  done
  sinfo -N >&2 || true
  die "nodes not idle after 40 s (logs: $LOG/slurmctld.log, $LOG/slurmd-n*.log)"
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  install_packages; stamp "packages present"
  id alice >/dev/null 2>&1 || useradd -m -s /bin/bash alice
  id bob >/dev/null 2>&1 || useradd -m -s /bin/bash bob
  start_munge; stamp "munged up"
  stop_slurm
  write_config
  install_jobenergy; stamp "config written, SPANK plugin and hooks installed"
  start_db; stamp "mariadb + slurmdbd up"
  local since n
  since=$(date +%s)
  slurmctld
  for n in $(seq 1 "$NODES"); do mkdir -p "/var/spool/slurmd/n$n"; slurmd -N "n$n"; done
  wait_nodes "$since"
  stamp "up: $(sinfo -h -o '%D nodes %T' | tr '\n' ' ')"
}

down() {
  stop_slurm
  stop_pidfile "$RUN/slurmdbd.pid"
  stop_pidfile "$RUN/mariadbd.pid"
  stop_pidfile /run/munge/munged.pid
  local c
  for c in /sys/fs/cgroup/*/slurm_n*; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
  stamp "down"
}

status() {
  local f rc=0 p
  for f in /run/munge/munged.pid "$RUN"/mariadbd.pid "$RUN"/slurmdbd.pid "$RUN"/slurmctld.pid "$RUN"/slurmd-*.pid; do
    [ -e "$f" ] || continue
    p=$(cat "$f"); if kill -0 "$p" 2>/dev/null; then echo "running $(basename "$f" .pid) pid=$p"; else echo "dead $(basename "$f" .pid)"; rc=1; fi
  done
  sinfo -N -o '%N %T %G' 2>/dev/null || rc=1
  [ "$(sinfo -h -t idle,mix,alloc -o %D 2>/dev/null | paste -sd+ | bc 2>/dev/null || echo 0)" = "$NODES" ] || rc=1
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
