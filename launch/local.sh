#!/usr/bin/env bash
# Train on this machine: one process, or NPROC processes that form one multi-process JAX job (a rehearsal, on CPU,
# of a multi-host run: jax.distributed on 127.0.0.1, gloo collectives, the data split over processes).
#
#   launch/local.sh -- --config=configs/train.py:model=tiny,topology=cpu --workdir=runs/x [--config.a.b=v ...]
#   NPROC=2 DEVICES_PER_PROC=4 launch/local.sh -- --config=configs/train.py:model=tiny,topology=cpu --workdir=runs/x
#   DRY_RUN=1 NPROC=2 launch/local.sh -- ...     print the commands instead of running them
#
# Everything after `--` goes to `llm-jax train` unchanged. Run it from the repository root (the config path is
# relative). Environment:
#   NPROC             processes (default 1). Above 1, process i gets --config.runtime.coordinator_address=
#                     127.0.0.1:PORT --config.runtime.num_processes=NPROC --config.runtime.process_id=i
#   DEVICES_PER_PROC  CPU devices each process splits its host CPU into (--config.runtime.num_cpu_devices)
#   PORT              the coordinator's port (default: a free one)
#   LOG_DIR           also write process i's output to LOG_DIR/process_i.log
#   PYTHON            the interpreter (default: the repository's .venv/bin/python, else python3)
#   GRACE_S           when a process fails, how long the others get after SIGTERM before SIGKILL (default 10)
#   STOP_GRACE_S      after a SIGTERM/SIGINT to this script, how long the processes get to save and exit before
#                     SIGKILL (default 120)
#   DRY_RUN=1         print the commands, run nothing
# Several processes on a machine with GPUs would each take all of them: set JAX_PLATFORMS=cpu for a rehearsal.
#
# Process i's output lines start with "[i] " (only process 0 logs training). The exit status is 0 when every process
# exits 0; when one fails, the others are stopped (SIGTERM, then SIGKILL after GRACE_S), so a dead peer does not
# leave them waiting for it. SIGTERM or SIGINT to this script is passed on to every process: they stop after the
# same step and save a checkpoint. A second one, or STOP_GRACE_S seconds without them all exiting, kills them.
# The numbers above must be whole numbers: anything else is refused before the shell does arithmetic with it.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ${1:-} == -- ]]; then
  shift
fi
# Checked before any arithmetic: bash evaluates `x[$(cmd)]` inside $((...)), so an unchecked value could run cmd.
: "${NPROC:=1}" "${GRACE_S:=10}" "${STOP_GRACE_S:=120}"
require_int NPROC 1
require_int GRACE_S
require_int STOP_GRACE_S
for name in DEVICES_PER_PROC PORT; do
  if [[ -n ${!name:-} ]]; then
    require_int "$name" 1
  fi
done
nproc=$NPROC grace=$GRACE_S stop_grace=$STOP_GRACE_S
python=$(llm_jax_python)
cmd=("$python" -m llm_jax train "$@")
if [[ -n ${DEVICES_PER_PROC:-} ]]; then
  cmd+=("--config.runtime.num_cpu_devices=$DEVICES_PER_PROC")
fi

if ((nproc == 1)); then
  if dry_run; then
    quote "${cmd[@]}"
    exit 0
  fi
  exec "${cmd[@]}"
fi

port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if dry_run; then
  echo "# $nproc processes, started together; process i's output lines are prefixed with [i]"
fi
if [[ -n ${LOG_DIR:-} ]] && ! dry_run; then
  mkdir -p "$LOG_DIR"
fi

pids=()     # the training processes; "" once reaped
printers=() # the processes that prefix their output

signal_all() { # signal every process still running
  local pid
  for pid in "${pids[@]}"; do
    if [[ -n $pid ]]; then
      kill "-$1" "$pid" 2>/dev/null || true
    fi
  done
}

kill_at=""  # when set: the time (in $SECONDS) at which the processes still running get SIGKILL
signals=0
on_signal() {
  signals=$((signals + 1))
  if ((signals == 1)); then
    say "[launch] passing SIGTERM to the $nproc processes (again, or ${stop_grace}s from now, to kill them)"
    signal_all TERM
    if [[ -z $kill_at ]] || ((SECONDS + stop_grace < kill_at)); then
      kill_at=$((SECONDS + stop_grace))
    fi
  else
    say "[launch] killing the $nproc processes"
    signal_all KILL
  fi
}
trap on_signal TERM INT

# Each line of stdin with $1 in front, as soon as it comes (mawk, Debian's awk, holds piped input back until EOF).
prefix() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s%s\n' "$1" "$line"
  done
}

for ((i = 0; i < nproc; i++)); do
  if ((signals > 0)); then
    break # stopped while starting: the processes started so far are signalled; start no more
  fi
  proc_cmd=("${cmd[@]}" "--config.runtime.coordinator_address=127.0.0.1:$port" "--config.runtime.num_processes=$nproc"
    "--config.runtime.process_id=$i")
  if dry_run; then
    quote "${proc_cmd[@]}"
    continue
  fi
  if [[ -n ${LOG_DIR:-} ]]; then
    exec {out}> >(tee "$LOG_DIR/process_$i.log" | prefix "[$i] ")
  else
    exec {out}> >(prefix "[$i] ")
  fi
  printers+=("$!")
  "${proc_cmd[@]}" >&"$out" 2>&1 &
  pids+=("$!")
  exec {out}>&-
done
if dry_run; then
  exit 0
fi

status=0
running=${#pids[@]}
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    pids[i]=""
    running=$((running - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      if ((running > 0)); then
        say "[launch] process $i exited with status $rc; stopping the other processes"
        signal_all TERM
        kill_at=$((SECONDS + grace))
      fi
    fi
  done
  if [[ -n $kill_at ]] && ((SECONDS >= kill_at)); then
    signal_all KILL
    kill_at=""
  fi
  if ((running > 0)); then
    sleep 0.2
  fi
done
for pid in "${printers[@]}"; do
  wait "$pid" 2>/dev/null || true # the last lines of output
done
if ((status != 0)); then
  say "[launch] failed: the first process to fail exited with status $status"
fi
exit "$status"
