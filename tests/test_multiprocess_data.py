"""Two real JAX processes (jax.distributed on 127.0.0.1) read disjoint halves of every global batch."""

import os
import socket
import subprocess
import sys

import numpy as np

from llm_jax.data.pipeline import make_data
from tests.conftest import REPO, small_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_halves_of_each_global_batch(tmp_path):
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_data_worker", str(port), str(i),
                               str(tmp_path / f"p{i}.npz")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    parts = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    assert [int(p["process_index"]) for p in parts] == [0, 1]
    assert all(int(p["examples"]) == 4 * 8 for p in parts)  # both count global examples

    whole = make_data(small_config())  # one process reading the whole global batch
    for step in range(4):
        halves = [p["inputs"][step] for p in parts]
        assert halves[0].shape == halves[1].shape == (4, 32)
        np.testing.assert_array_equal(np.concatenate(halves), whole.train.batch_at(step)["inputs"])
        rows = [{r.tobytes() for r in h} for h in halves]
        assert not rows[0] & rows[1], f"step {step}: both processes read the same row"
