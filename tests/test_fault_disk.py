"""Fault: the disk. A full disk that hits the logs and TensorBoard files as well as the checkpoints ends the run
with one clear line, keeps the last complete checkpoint, and the next start resumes; a workdir that cannot be
written is refused before set-up."""

import os
import subprocess
import sys
import time

from llm_jax.checkpoint.integrity import damage
from tests.conftest import REPO, TRAIN_CONFIG
from tests.test_checkpoint import _disk_full
from tests.test_cli import SMALL

ARGS = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", *SMALL,
        "--config.train.log_every=1", "--config.checkpoint.every_steps=2"]


def _run_files(workdir):
    return [workdir / "metrics.jsonl", workdir / "train.log", *(workdir / "tensorboard").glob("events.*")]


def test_a_full_disk_that_hits_the_logs_ends_with_one_line_and_the_next_start_resumes(tmp_path):
    args = [*ARGS, f"--workdir={tmp_path}"]
    subprocess.run([*args, "--config.train.steps=4"], cwd=REPO, check=True, capture_output=True)
    # Files may grow only a little past the run's current logs: the next log lines hit the limit (EFBIG, as a
    # full disk gives ENOSPC), and so would any checkpoint file (a few MB).
    limit = max(f.stat().st_size for f in _run_files(tmp_path)) + 1500
    out = subprocess.run(_disk_full(limit, [*args, "--config.train.steps=40"]), cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 1, out.stderr[-3000:]
    error = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "File too large" in error[-1] and "run the same command again" in error[-1], error[-3:]
    complete = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert 4 in complete and all(damage(tmp_path / "checkpoints" / str(s)) == [] for s in complete)

    resumed = subprocess.run([*args, "--config.train.steps=8"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints' / str(max(complete))}" in resumed.stdout


def test_a_read_only_workdir_is_refused_before_set_up():
    # /proc/1 exists and no one, root included (whom permission bits do not stop), can create files in it.
    workdir = "/proc/1"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    started = time.time()
    out = subprocess.run([*ARGS, f"--workdir={workdir}", "--config.train.steps=4"], cwd=REPO, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--workdir {workdir}: cannot write to" in lines[0], out.stderr
    assert "devices:" not in out.stdout, "refused before any set-up"
    assert time.time() - started < 60
