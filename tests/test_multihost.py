"""Multi-host behaviour through the real command line: two processes of four CPU devices each, joined by
jax.distributed on 127.0.0.1 from the `runtime.*` config keys, train like one process of eight devices; a SIGTERM to
one of them stops both after the same step with one checkpoint, and the job resumes from it; a dead or hung peer
ends the job within a bounded time instead of hanging."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from llm_jax.train.loop import train
from tests.conftest import REPO, TRAIN_CONFIG, small_config
from tests.test_cli import SMALL
from tests.test_multiprocess_data import _free_port


def _start_job(workdir, steps: int, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI sets up its devices itself
    return [subprocess.Popen(
        [sys.executable, "-m", "llm_jax", "train", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu",
         f"--workdir={workdir}", *SMALL, f"--config.train.steps={steps}", "--config.train.log_every=1",
         f"--config.runtime.coordinator_address=127.0.0.1:{port}", "--config.runtime.num_processes=2",
         f"--config.runtime.process_id={i}", "--config.runtime.num_cpu_devices=4", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs) -> list[str]:
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2500:] for log in logs)
    return logs


def _losses(workdir) -> dict[int, float]:
    records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


def _process(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the training process of `rank` that launch/local.sh started."""
    for pid in _children(launcher.pid):
        with open(f"/proc/{pid}/cmdline") as f:
            if f"--config.runtime.process_id={rank}" in f.read().split("\0"):
                return pid
    raise AssertionError(f"launch/local.sh has no process {rank}")


def _launch_local(workdir, steps: int) -> subprocess.Popen:
    """The job through launch/local.sh, as a user starts it: 2 processes x 4 CPU devices. A constant learning rate
    (after warmup), so that a run stopped early and resumed with another train.steps follows one schedule."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "NPROC": "2", "DEVICES_PER_PROC": "4"}
    return subprocess.Popen(["bash", "launch/local.sh", "--", f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu",
                             f"--workdir={workdir}", *SMALL, f"--config.train.steps={steps}",
                             "--config.train.log_every=1", "--config.checkpoint.every_steps=2",
                             "--config.optimizer.schedule=constant", "--config.sample.max_new_tokens=8"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _output(launcher: subprocess.Popen) -> str:
    out = launcher.communicate(timeout=300)[0]
    assert launcher.returncode == 0, out[-3000:]
    assert all(line.startswith(("[0] ", "[1] ")) for line in out.splitlines()), out[-2000:]
    return out


def test_two_processes_of_four_devices_stop_together_resume_and_train_like_one_of_eight(tmp_path):
    job = tmp_path / "job"
    launcher = _launch_local(job, 10_000)
    try:
        deadline = time.time() + 240
        while not ((job / "metrics.jsonl").exists() and len(_losses(job)) >= 3):
            assert time.time() < deadline and launcher.poll() is None, "the job did not start training"
            time.sleep(0.05)
        os.kill(_process(launcher, 1), signal.SIGTERM)  # only the second process is told ...
        out = _output(launcher)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # ... both stop after the same step and save one checkpoint together; only process 0 logs.
    stopped = int(re.search(r"\[0\] stopped because another process got a signal after step (\d+)", out)[1])
    assert "[0] devices: 8 x cpu | mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in out and "[1] step" not in out
    assert stopped in {int(p.name) for p in (job / "checkpoints").iterdir() if p.name.isdigit()}

    out = _output(_launch_local(job, stopped + 2))
    assert f"[0] resumed from {job / 'checkpoints' / str(stopped)}" in out
    assert f"[0] step {stopped + 2}/{stopped + 2} | loss" in out and "[0] --- sample ---" in out

    cfg = small_config()
    cfg.train.steps, cfg.train.log_every, cfg.optimizer.schedule = stopped + 2, 1, "constant"
    one = train(cfg, tmp_path / "one", jax.devices())  # one process, the same 8-device mesh
    got = _losses(job)
    assert sorted(got) == list(range(1, stopped + 3))
    assert [got[s] for s in sorted(got)] == pytest.approx(one.train_losses, rel=1e-6, abs=0)
    # The end of the run: evaluation and sampling with the parameters split between the two processes.
    assert json.loads((job / "metrics.jsonl").read_text().splitlines()[-1])["eval_loss"] == pytest.approx(
        one.eval_loss, rel=1e-6)


@pytest.mark.parametrize("how, flags, says", [
    # A dead peer stops sending heartbeats: jax.distributed ends the others.
    # Or, when it dies in the middle of a collective, the survivor's gloo transport fails on the broken connection.
    ("SIGKILL", ["--config.runtime.heartbeat_timeout_s=5"],
     ("stopped sending heartbeats", "another task died", "gloo::EnforceNotMet", "gloo::IoException")),
    # A hung peer (stopped here; alive but stuck is the same to the others): the step watchdog ends the process
    # long before the 100 s heartbeat timeout would.
    ("SIGSTOP", ["--config.runtime.step_timeout_s=6"], ("no progress for 6 s after step",)),
])
def test_a_dead_or_hung_peer_ends_the_job_within_a_bounded_time(tmp_path, how, flags, says):
    job = tmp_path / "job"
    # The mesh's data axis spans the two processes over "DCN" (JAX's hybrid layout, a process per node).
    procs = _start_job(job, 100_000, *flags, "--config.mesh.data=4", "--config.mesh.dcn_data=2")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((job / "metrics.jsonl").exists() and len(_losses(job)) >= 2):
            assert procs[0].poll() is None, procs[0].communicate()[0][-2000:]
            time.sleep(0.2)
        assert len(_losses(job)) >= 2, "the job did not start training"
        procs[1].send_signal(getattr(signal, how))
        hit = time.time()
        out = procs[0].communicate(timeout=60)[0]
        assert time.time() - hit < 60 and procs[0].returncode != 0
        assert any(s in out for s in says), out[-2000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),  # srun -n 1: one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, True),  # a TPU VM pod slice
    ({"TPU_WORKER_HOSTNAMES": "t0"}, False),  # a single-host TPU VM
    ({"KUBERNETES_SERVICE_HOST": "10.1.0.1", "JOB_COMPLETION_INDEX": "3"}, True),
])
def test_a_cluster_is_recognised_from_its_environment(monkeypatch, env, expected):
    from llm_jax.parallel.runtime import in_cluster

    for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert in_cluster() is expected
