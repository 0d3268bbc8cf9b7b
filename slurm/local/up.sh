#!/usr/bin/env bash
# slurm/local/up.sh - idempotent single-node Slurm cluster on loopback, for tests (Debian 12, root).
#   munged + [mariadbd + slurmdbd] + slurmctld + slurmd, no systemd, no cgroups.
#   * installs missing Debian packages, starts only what is not already running,
#     records PIDs of what it started under $SDD_SLURM_DIR/run (slurm-down.sh stops only those)
#   * waits until `sinfo` shows node "localhost" usable and prints how long it took
# Env knobs:
#   SDD_SLURM_DIR           state/log/spool/config dir                 (default ${TMPDIR:-/tmp}/sdd-slurm)
#   SDD_SLURM_ACCOUNTING    slurmdbd | none                            (default slurmdbd)
#                           slurmdbd: private MariaDB on 127.0.0.1:$SDD_SLURM_DB_PORT -> real sacct
#                           none: no sacct: submitit cannot see finished jobs and `sdd status`
#                           shows queued cells as unknown (the tests use slurmdbd)
#   SDD_SLURM_DB_PORT       MariaDB TCP port on 127.0.0.1              (default 3307)
#   SDD_SLURM_FAKE_GPUS     number of fake gres/gpu, 0 = no GRES       (default 2, max 4)
#   SDD_SLURM_CPUS          advertise this many CPUs instead of the real count
#                           (SlurmdParameters=config_overrides), e.g. 8 on a 2-core box
#   SDD_SLURM_SCHED_PARAMS  SchedulerParameters=  (default: fast scheduling for tests)
#   SDD_SLURM_WAIT_S        max seconds to wait for the node           (default 60)
set -euo pipefail
T0=$(date +%s.%N)
DIR=${SDD_SLURM_DIR:-${TMPDIR:-/tmp}/sdd-slurm}
ACCT=${SDD_SLURM_ACCOUNTING:-slurmdbd}
DB_PORT=${SDD_SLURM_DB_PORT:-3307}
FAKE_GPUS=${SDD_SLURM_FAKE_GPUS:-2}
CPUS_OVERRIDE=${SDD_SLURM_CPUS:-}
SCHED_PARAMS=${SDD_SLURM_SCHED_PARAMS-batch_sched_delay=0,sched_interval=2,bf_interval=2,sched_min_interval=0}
WAIT_S=${SDD_SLURM_WAIT_S:-60}
CONF=$DIR/etc/slurm.conf
DB=$DIR/mysql
log() { echo "[slurm-up] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }
# alive PID (not a zombie) whose command name is $2
alive() {
  local pid=$1 comm=$2 st
  [[ -n $pid && -r /proc/$pid/stat ]] || return 1
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $st != Z && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}
pid_of() { [[ -s $1 ]] && cat "$1" || true; }
stop_pid() { # pid comm
  alive "$1" "$2" || return 0
  kill "$1"; for _ in $(seq 100); do alive "$1" "$2" || return 0; sleep 0.1; done
  kill -KILL "$1"
}
# install $2 as $1 if different; returns 0 if the file changed
put() { if cmp -s "$2" "$1"; then rm -f "$2"; return 1; else mv "$2" "$1"; return 0; fi; }

[[ $EUID -eq 0 ]] || die "run as root (slurmd must be root to launch jobs as any user)"
[[ $ACCT == slurmdbd || $ACCT == none ]] || die "SDD_SLURM_ACCOUNTING must be slurmdbd or none"
export SLURM_CONF=$CONF

# ---------------------------------------------------------------- packages
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd    >/dev/null || need+=(slurmd)
command -v sbatch    >/dev/null || need+=(slurm-client)
command -v munged    >/dev/null || need+=(munge)
if [[ $ACCT == slurmdbd ]]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if ((${#need[@]})); then
  log "installing ${need[*]} (apt, --no-install-recommends)"
  [[ -x /usr/sbin/policy-rc.d ]] || log "note: no policy-rc.d; Debian maintainer scripts may try to start services"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  log "packages installed at +$(elapsed)s"
fi
mkdir -p "$DIR"/{etc,state,spool,log,run}

# ---------------------------------------------------------------- munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already answering on /run/munge/munge.socket.2"
else
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged            # daemonizes, writes /run/munge/munged.pid
  for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$DIR/run/munged.pid"  # we started it -> slurm-down.sh may stop it
  munge -n | unmunge >/dev/null || die "munge not working (see /var/log/munge/munged.log)"
  log "started munged pid $(cat "$DIR/run/munged.pid")"
fi

# ---------------------------------------------------------------- slurm.conf / gres.conf
if [[ $ACCT == slurmdbd ]]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

hw=$(slurmd -C | head -1)       # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105
getv() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
if [[ -n $CPUS_OVERRIDE ]]; then
  NODE_HW="CPUs=$CPUS_OVERRIDE"; EXTRA="SlurmdParameters=config_overrides"
else
  NODE_HW="CPUs=$(getv CPUs) Boards=$(getv Boards) SocketsPerBoard=$(getv SocketsPerBoard) CoresPerSocket=$(getv CoresPerSocket) ThreadsPerCore=$(getv ThreadsPerCore)"
  EXTRA=""
fi
GRES_NODE=""; GRES_TYPES=""
{
  if ((FAKE_GPUS > 0)); then
    ((FAKE_GPUS <= 4)) || die "SDD_SLURM_FAKE_GPUS max 4"
    GRES_NODE="Gres=gpu:$FAKE_GPUS"; GRES_TYPES="GresTypes=gpu"
    # Count= without File= is rejected for gpu (node -> INVAL "count reported lower than configured");
    # any char device works as the "GPU file" with task/none (no device cgroup).
    devs=(/dev/null /dev/zero /dev/full /dev/urandom)
    echo "AutoDetect=off"
    for ((i = 0; i < FAKE_GPUS; i++)); do echo "NodeName=localhost Name=gpu File=${devs[$i]}"; done
  fi
} >"$DIR/etc/gres.conf.new"
cat >"$CONF.new" <<EOF
# generated by slurm-up.sh - single node, loopback only, no cgroups/systemd
ClusterName=sddtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job (scontrol requeue / submitit checkpoint) waits cred_expire s before restarting (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
${SCHED_PARAMS:+SchedulerParameters=$SCHED_PARAMS}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job with no --mem gets the whole node's memory -> jobs run one at a time
DefMemPerCPU=512
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MaxArraySize=10001
$GRES_TYPES
$EXTRA
NodeName=localhost NodeAddr=127.0.0.1 $NODE_HW RealMemory=$(getv RealMemory) $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
put "$CONF" "$CONF.new" && changed=1
put "$DIR/etc/gres.conf" "$DIR/etc/gres.conf.new" && changed=1

# ---------------------------------------------------------------- accounting: MariaDB + slurmdbd
if [[ $ACCT == slurmdbd ]]; then
  if alive "$(pid_of "$DB/mysqld.pid")" mariadbd; then
    log "mariadbd already running (pid $(cat "$DB/mysqld.pid"))"
  else
    install -d -o mysql -g mysql "$DB"
    if [[ ! -d $DB/data/mysql ]]; then
      mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --skip-test-db \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
    fi
    rm -f "$DB/mysqld.sock"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB/data" \
      --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --innodb-buffer-pool-size=32M --innodb-log-file-size=8M --performance-schema=OFF --skip-log-bin \
      --innodb-lock-wait-timeout=900 --log-error="$DIR/log/mariadb.err" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 150); do [[ -S $DB/mysqld.sock && -s $DB/mysqld.pid ]] && break; sleep 0.1; done
    alive "$(pid_of "$DB/mysqld.pid")" mariadbd || die "mariadbd did not start, see $DIR/log/mariadb.err"
    log "started mariadbd pid $(cat "$DB/mysqld.pid") (127.0.0.1:$DB_PORT)"
  fi
  mariadb --no-defaults -uroot -S "$DB/mysqld.sock" -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmdb';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdb';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "cannot configure MariaDB"
  cat >"$DIR/etc/slurmdbd.conf.new" <<EOF
# generated by slurm-up.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmdb
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf.new"
  dbd_pid=$(pid_of "$DIR/run/slurmdbd.pid")
  if put "$DIR/etc/slurmdbd.conf" "$DIR/etc/slurmdbd.conf.new" && alive "$dbd_pid" slurmdbd; then
    log "slurmdbd.conf changed -> restarting slurmdbd"; stop_pid "$dbd_pid" slurmdbd
  fi
  if alive "$(pid_of "$DIR/run/slurmdbd.pid")" slurmdbd; then
    log "slurmdbd already running (pid $(cat "$DIR/run/slurmdbd.pid"))"
  else
    rm -f "$DIR/run/slurmdbd.pid"
    slurmdbd || die "slurmdbd failed, see $DIR/log/slurmdbd.log"   # reads slurmdbd.conf next to $SLURM_CONF
    # readiness = port 6819 open (sacctmgr would need slurm.conf and can hang for minutes)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
    (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null || die "slurmdbd not listening, see $DIR/log/slurmdbd.log"
    log "started slurmdbd pid $(cat "$DIR/run/slurmdbd.pid")"
  fi
fi

# Make the config visible to every client (sbatch/squeue/sacct spawned by submitit) without
# SLURM_CONF: /etc/slurm/*.conf -> our files (never clobber a foreign regular file).
mkdir -p /etc/slurm
for f in slurm.conf gres.conf slurmdbd.conf; do
  tgt=/etc/slurm/$f; [[ -e $DIR/etc/$f ]] || continue
  if [[ -L $tgt || ! -e $tgt ]]; then ln -sfn "$DIR/etc/$f" "$tgt"
  elif ! cmp -s "$tgt" "$DIR/etc/$f"; then log "WARNING: foreign $tgt kept; clients need SLURM_CONF=$CONF"; fi
done
echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"

# ---------------------------------------------------------------- slurmctld / slurmd
ctld_pid=$(pid_of "$DIR/run/slurmctld.pid"); slurmd_pid=$(pid_of "$DIR/run/slurmd.pid")
if ((changed)) && { alive "$ctld_pid" slurmctld || alive "$slurmd_pid" slurmd; }; then
  log "slurm.conf/gres.conf changed -> restarting slurmctld and slurmd (jobs are kept in StateSaveLocation)"
  stop_pid "$slurmd_pid" slurmd; stop_pid "$ctld_pid" slurmctld
fi
if alive "$(pid_of "$DIR/run/slurmctld.pid")" slurmctld; then
  log "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid"))"
else
  rm -f "$DIR/run/slurmctld.pid"
  slurmctld -f "$CONF" || die "slurmctld failed, see $DIR/log/slurmctld.log"
  for _ in $(seq 100); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  log "started slurmctld pid $(cat "$DIR/run/slurmctld.pid")"
fi
if alive "$(pid_of "$DIR/run/slurmd.pid")" slurmd; then
  log "slurmd already running (pid $(cat "$DIR/run/slurmd.pid"))"
else
  rm -f "$DIR/run/slurmd.pid"
  slurmd -f "$CONF" -N localhost || die "slurmd failed, see $DIR/log/slurmd.log"
  for _ in $(seq 50); do [[ -s $DIR/run/slurmd.pid ]] && break; sleep 0.1; done
  log "started slurmd pid $(cat "$DIR/run/slurmd.pid")"
fi

# ---------------------------------------------------------------- wait for the node
resumed=0; deadline=$(($(date +%s) + WAIT_S))
while :; do
  st=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -1 || true)
  case $st in
    idle | mixed | allocated | completing) break ;;
    *drain* | inval | down*)
      # stale DRAIN/INVAL reason kept in node_state from an earlier run/config (ReturnToService=2
      # does not clear those) -> resume once
      if ((!resumed)); then scontrol update nodename=localhost state=resume 2>/dev/null || true; resumed=1; fi ;;
  esac
  if (($(date +%s) > deadline)); then
    sinfo -R || true; tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2
    die "node not ready after ${WAIT_S}s (state='$st')"
  fi
  sleep 0.2
done
log "node localhost is '$st' (accounting=$ACCT); ready in $(elapsed)s"
sinfo -o '%P %a %l %D %T %N %c %m %G'
