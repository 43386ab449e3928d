"""Two real JAX processes train one model: a SIGTERM to either one stops both at the same step with one
checkpoint, and the job resumes from it."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.test_multiprocess_data import _free_port


def _start(workdir, steps, out_dir):
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    return [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_train_worker", str(port), str(i),
                              str(workdir), str(steps), str(out_dir / f"p{i}.json")], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs):
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2500:] for log in logs)
    return logs


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r["step"] for r in map(json.loads, lines) if "loss" in r and "eval_loss" not in r]


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    workdir = tmp_path / "run"
    procs = _start(workdir, 500, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and len(_logged_steps(workdir)) < 3 and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # only the second process is told
    logs = _finish(procs)
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [r["devices"] for r in results] == [4, 4]
    stopped = results[0]["stopped_at"]
    assert stopped is not None and 3 <= stopped < 500 and results[1]["stopped_at"] == stopped, results
    assert f"stopped because another process got a signal after step {stopped}" in logs[0]  # process 0 logs
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped]

    procs = _start(workdir, stopped + 2, tmp_path)
    logs = _finish(procs)
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [r["start_step"] for r in results] == [stopped, stopped]
    assert results[0]["losses"] == results[1]["losses"] and len(results[0]["losses"]) == 2
    # The end of the run: both processes evaluate and sample with the parameters split between them.
    assert results[0]["eval_loss"] == results[1]["eval_loss"] and results[0]["eval_loss"] < 10
    assert results[0]["sample"] == results[1]["sample"] and len(results[0]["sample"]) > len("ROMEO:\n")
