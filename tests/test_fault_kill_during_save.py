"""Fault: `kill -9` while a checkpoint is being written, at several points of the write and just after orbax
renamed it into place (before its file list was written). Each next start resumes from the last complete
checkpoint, and the run ends with bitwise the losses of an uninterrupted one."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, TRAIN_CONFIG
from tests.test_cli import SMALL

EVERY = 3
ARGS = [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu", *SMALL,
        "--config.train.steps=24", f"--config.checkpoint.every_steps={EVERY}", "--config.checkpoint.keep=20",
        "--config.train.log_every=1"]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and "eval_loss" not in r}


def _complete(checkpoints):
    return sorted(int(e) for e in os.listdir(checkpoints) if e.isdigit()) if checkpoints.exists() else []


def _kill_inside_a_save(workdir, offset_s, deadline):
    """Start the run and SIGKILL it `offset_s` after the temporary directory of a save after its first one appears,
    if that directory is still there (else wait for the next save); offset None: kill as soon as a step directory
    is renamed into place, before its file list exists. Returns (the complete steps at the kill, the step whose
    save was interrupted, stdout)."""
    checkpoints = workdir / "checkpoints"
    proc = subprocess.Popen([*ARGS, f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    done_before = set(_complete(checkpoints))
    first_save = max(done_before, default=0) + EVERY  # let it finish: each start then makes progress
    try:
        while time.time() < deadline:
            assert proc.poll() is None, "the run ended before a save could be interrupted; make it longer"
            entries = os.listdir(checkpoints) if checkpoints.exists() else []
            if offset_s is None:
                fresh = [e for e in entries if e.isdigit() and first_save < int(e) and int(e) not in done_before]
                if fresh and not (checkpoints / fresh[0] / "llm_jax_files.json").exists():
                    proc.send_signal(signal.SIGKILL)
                    interrupted = int(fresh[0])
                    break
                done_before |= {int(e) for e in fresh}
            else:
                tmp = [e for e in entries if ".orbax-checkpoint-tmp" in e and int(e.split(".")[0]) > first_save]
                if tmp:
                    time.sleep(offset_s)
                    if (checkpoints / tmp[0]).exists():  # still mid-write: this is the moment
                        proc.send_signal(signal.SIGKILL)
                        interrupted = int(tmp[0].split(".")[0])
                        break
                    while (checkpoints / tmp[0]).exists():
                        time.sleep(0.001)
            time.sleep(0.001)
        else:
            raise AssertionError("no save was interrupted in time")
        at_kill = _complete(checkpoints)
    finally:
        proc.kill()
        out = proc.communicate()[0]
    return at_kill, interrupted, out


def test_kill_9_at_several_points_of_a_save_then_resume_gives_the_uninterrupted_losses(tmp_path):
    subprocess.run([*ARGS, f"--workdir={tmp_path / 'whole'}"], cwd=REPO, check=True, capture_output=True)
    run, deadline = tmp_path / "run", time.time() + 400
    for offset in (0.0, None, 0.02):
        resume_point = max(_complete(run / "checkpoints"), default=0)
        at_kill, interrupted, out = _kill_inside_a_save(run, offset, deadline)
        if resume_point:
            assert f"resumed from {run / 'checkpoints' / str(resume_point)}: step {resume_point}" in out, out[-2000:]
        # Mid-write, the step is not complete; just renamed, it is, without its file list (and must be usable).
        assert (interrupted in at_kill) == (offset is None), (offset, interrupted, at_kill)

    out = subprocess.run([*ARGS, f"--workdir={run}"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = int(re.search(r"resumed from \S+/checkpoints/(\d+)", out.stdout)[1])
    assert last == max(at_kill), "the last start resumes from the checkpoint written just before the last kill"
    assert _losses(run) == _losses(tmp_path / "whole"), "every step's loss equals the uninterrupted run's, bitwise"
