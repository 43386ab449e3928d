"""Fault: signals at awkward moments. A signal during set-up stops the run before its first step (exit 0,
nothing written); a second Ctrl-C exits at once, leaving every complete checkpoint whole."""

import os
import signal
import subprocess
import sys
import time

from llm_jax.checkpoint.integrity import damage
from tests.conftest import REPO, TRAIN_CONFIG
from tests.test_cli import SMALL

ARGS = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", *SMALL,
        "--config.train.log_every=1"]


def _start(workdir, *extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen([*ARGS, f"--workdir={workdir}", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _catches(pid, sig):
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (sig - 1)))


def test_a_signal_during_set_up_stops_before_the_first_step_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = _start(workdir, "--config.train.steps=50")
    _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc, "set-up began")  # train() sets its handlers first
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert f"stopped by signal {int(signal.SIGTERM)} during set-up, before step 1: nothing new to save" in out
    assert "step 1/" not in out
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"] and not any((workdir / "checkpoints").iterdir())


def test_a_second_ctrl_c_exits_at_once_and_the_checkpoints_stay_whole(tmp_path):
    workdir = tmp_path / "run"
    # The tiny preset's own width: its checkpoint takes long enough to write that the second signal comes first.
    proc = _start(workdir, "--config.train.steps=100000", "--config.checkpoint.every_steps=3",
                  "--config.model.d_model=256", "--config.model.mlp_dim=1024")
    checkpoints = workdir / "checkpoints"
    _wait_for(lambda: checkpoints.exists() and any(p.name == "6" for p in checkpoints.iterdir()), proc,
              "two checkpoints were saved")
    proc.send_signal(signal.SIGINT)
    first = ""
    while "stopping after this step" not in first:  # the first signal was handled: the run is finishing up
        first = proc.stderr.readline()
        assert first, "the run ended without handling the first signal"
    # Frozen while it finishes, it gets a second Ctrl-C more than a second later (sooner counts as the same
    # request passed on by a launcher), handled as soon as it goes on.
    proc.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, err[-3000:])
    assert "again: exiting now without a checkpoint" in err and "Traceback" not in err
    complete = [p for p in checkpoints.iterdir() if p.name.isdigit()]
    assert len(complete) >= 2 and all(damage(p) == [] for p in complete)
