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
#   DRY_RUN=1         print the commands, run nothing
# Several processes on a machine with GPUs would each take all of them: set JAX_PLATFORMS=cpu for a rehearsal.
#
# Process i's output lines start with "[i] " (only process 0 logs training). The exit status is 0 when every process
# exits 0; when one fails, the others are stopped (SIGTERM, then SIGKILL after GRACE_S), so a dead peer does not
# leave them waiting for it. SIGTERM or SIGINT to this script is passed on to every process: they stop after the
# same step and save a checkpoint. A second one kills them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ${1:-} == -- ]]; then
  shift
fi
nproc=${NPROC:-1}
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$nproc'"
grace=${GRACE_S:-10}
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
for ((i = 0; i < nproc; i++)); do
  proc_cmd=("${cmd[@]}" "--config.runtime.coordinator_address=127.0.0.1:$port" "--config.runtime.num_processes=$nproc"
    "--config.runtime.process_id=$i")
  if dry_run; then
    quote "${proc_cmd[@]}"
    continue
  fi
  if [[ -n ${LOG_DIR:-} ]]; then
    exec {out}> >(tee "$LOG_DIR/process_$i.log" | awk -v p="[$i] " '{ print p $0; fflush() }')
  else
    exec {out}> >(awk -v p="[$i] " '{ print p $0; fflush() }')
  fi
  printers+=("$!")
  "${proc_cmd[@]}" >&"$out" 2>&1 &
  pids+=("$!")
  exec {out}>&-
done
if dry_run; then
  exit 0
fi

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
    say "[launch] passing SIGTERM to the $nproc processes (again to kill them)"
    signal_all TERM
  else
    signal_all KILL
  fi
}
trap on_signal TERM INT

status=0
running=$nproc
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
