"""No process outlives its run: a training run killed with SIGKILL takes its grain worker processes (and
multiprocessing's resource tracker) with it, and a run that ends normally leaves no child behind."""

import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, TRAIN_CONFIG
from tests.test_cli import SMALL

Proc = tuple[int, str]  # (pid, start time): a pid reused by an unrelated process is not the same process


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (field 3), or None when the process is gone."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> set[Proc]:
    """Every living process below `pid` (children, their children, ...)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(proc: Proc) -> bool:
    """Still running (a zombie waiting for init to reap it counts as gone)."""
    fields = _stat(proc[0])
    return fields is not None and fields[19] == proc[1] and fields[0] != "Z"


def describe(procs: set[Proc]) -> str:
    def cmd(pid: int) -> str:
        try:
            return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:150]
        except OSError:
            return "?"
    return "; ".join(f"{pid}: {cmd(pid)}" for pid, _ in sorted(procs))


def wait_all_gone(procs: set[Proc], timeout: float) -> set[Proc]:
    """Those of `procs` still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in procs if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def end_all(proc: subprocess.Popen, below: set[Proc]) -> None:
    """Whatever the test left running: the process it started and those found below it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid, _ in {p for p in below if alive(p)}:
        os.kill(pid, signal.SIGKILL)


def train(workdir: pathlib.Path, *overrides: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu",
           f"--workdir={workdir}", *SMALL, "--config.data.workers=1", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def training(workdir: pathlib.Path) -> bool:
    metrics = workdir / "metrics.jsonl"
    return metrics.exists() and '"loss"' in metrics.read_text()


def test_sigkill_of_a_run_takes_its_workers_with_it(tmp_path):
    proc = train(tmp_path, "--config.train.steps=100000", "--config.train.log_every=1")
    below: set[Proc] = set()
    try:
        deadline = time.monotonic() + 240
        while not training(tmp_path):
            assert proc.poll() is None, f"the run exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        below = descendants(proc.pid)
        assert below, "no worker process found below the run"  # else the test checks nothing
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_all_gone(below, timeout=5)
        assert not left, f"still running 5 s after the run was killed: {describe(left)}"
    finally:
        end_all(proc, below)


def test_a_run_that_ends_leaves_no_process_behind(tmp_path):
    proc = train(tmp_path, "--config.train.steps=3")
    seen: set[Proc] = set()
    try:
        while proc.poll() is None:  # the children exist only while the run does
            seen |= descendants(proc.pid)
            time.sleep(0.1)
        assert proc.returncode == 0
        assert seen, "no worker process was seen below the run"
        left = wait_all_gone(seen, timeout=5)
        assert not left, f"still running 5 s after the run ended: {describe(left)}"
    finally:
        end_all(proc, seen)
