#!/usr/bin/env bash
# slurm/local/down.sh - stop only the daemons slurm/local/up.sh started (PID files under $SDD_SLURM_DIR).
#   --keep-jobs : do not scancel jobs first (running job steps would be orphaned)
#   --purge     : also delete $SDD_SLURM_DIR (state, DB, logs, spool) and our /etc/slurm symlinks
set -uo pipefail
DIR=${SDD_SLURM_DIR:-${TMPDIR:-/tmp}/sdd-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf
KEEP_JOBS=0; PURGE=0
for a in "$@"; do
  case $a in --keep-jobs) KEEP_JOBS=1 ;; --purge) PURGE=1 ;; *) echo "unknown arg $a" >&2; exit 2 ;; esac
done
log() { echo "[slurm-down] $*"; }
alive() {
  local pid=$1 comm=$2 st
  [[ -n $pid && -r /proc/$pid/stat ]] || return 1
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $st != Z && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}
stop() { # pidfile comm
  local pf=$1 comm=$2 pid
  [[ -s $pf ]] || { log "$comm: no pid file, not ours / not running"; return 0; }
  pid=$(cat "$pf")
  if ! alive "$pid" "$comm"; then log "$comm: pid $pid not running"; rm -f "$pf"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 150); do alive "$pid" "$comm" || break; sleep 0.1; done
  if alive "$pid" "$comm"; then log "$comm: pid $pid ignored SIGTERM for 15s -> SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$pf"; log "$comm: stopped pid $pid"
}
T0=$(date +%s.%N)
if ((!KEEP_JOBS)) && [[ -s $DIR/run/slurmctld.pid ]] && alive "$(cat "$DIR/run/slurmctld.pid")" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    log "cancelling jobs: $jobs"; scancel $jobs 2>/dev/null
    for _ in $(seq 100); do [[ -z $(squeue -h -t PD,R,CG,S -o %A 2>/dev/null) ]] && break; sleep 0.1; done
  fi
fi
stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/slurmdbd.pid" slurmdbd
stop "$DIR/mysql/mysqld.pid" mariadbd
stop "$DIR/run/munged.pid" munged      # pid file exists only if slurm-up.sh started munged
# job steps belong to slurmstepd processes; we do not kill them, just report leftovers
left=$(ps -eo pid=,stat=,comm= | awk '$3=="slurmstepd" && $2 !~ /Z/ {print $1}' | tr '\n' ' ')
[[ -z ${left// /} ]] || log "WARNING: slurmstepd still running: $left"
if ((PURGE)); then
  for f in slurm.conf gres.conf slurmdbd.conf; do
    [[ -L /etc/slurm/$f && $(readlink "/etc/slurm/$f") == "$DIR/etc/$f" ]] && rm -f "/etc/slurm/$f"
  done
  rm -rf "$DIR"; log "purged $DIR"
fi
log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')s"
