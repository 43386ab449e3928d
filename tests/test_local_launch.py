"""launch/local.sh takes its numbers from the environment: each is checked to be an integer before the shell does
arithmetic with it, since bash evaluates `SECONDS[$(cmd)]` inside $((...)) and would run the command (a name that
is set: under `set -u` an unset one stops bash before it expands the subscript)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def local_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(["bash", "launch/local.sh", "--", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


# PYTHON=false: both processes fail at once, so the launcher reaches the code that stops the others after GRACE_S.
@pytest.mark.parametrize("name", ["NPROC", "GRACE_S", "STOP_GRACE_S", "DEVICES_PER_PROC", "PORT"])
def test_crafted_numbers_are_refused_before_any_arithmetic(name, tmp_path):
    marker = tmp_path / "pwned"
    env = {"NPROC": "2", "PORT": "12345", "PYTHON": "false", name: f"SECONDS[$(touch {marker})]"}
    out = local_sh(env, "--workdir=x")
    assert not marker.exists(), f"{name}: the launcher ran the command in the value"
    assert out.returncode == 2, (out.returncode, out.stderr)
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"error: {name} must be a whole number") and "touch" in line, line


@pytest.mark.parametrize("name, value", [("NPROC", "0"), ("NPROC", "08"), ("GRACE_S", "-1"), ("PORT", "2 ")])
def test_numbers_out_of_range_are_refused(name, value):
    out = local_sh({"NPROC": "2", "PORT": "12345", "DRY_RUN": "1", name: value}, "--workdir=x")
    assert out.returncode == 2 and out.stderr.startswith(f"error: {name} must be"), out.stderr


def test_good_numbers_pass(tmp_path):
    out = local_sh({"NPROC": "2", "PORT": "12345", "GRACE_S": "0", "STOP_GRACE_S": "30", "DEVICES_PER_PROC": "4",
                    "DRY_RUN": "1"}, "--workdir=x")
    assert out.returncode == 0, out.stderr
    assert "--config.runtime.num_cpu_devices=4" in out.stdout and "127.0.0.1:12345" in out.stdout


STUBBORN_TRAINER = """#!{python}
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a save that hangs: only SIGKILL ends it
print("ready", flush=True)
time.sleep(60)
"""


def test_processes_that_ignore_sigterm_are_killed_after_stop_grace(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(STUBBORN_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "NPROC": "2", "PORT": "1", "PYTHON": str(fake), "STOP_GRACE_S": "1"}
    proc = subprocess.Popen(["bash", "launch/local.sh", "--", "--workdir=x"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert sorted(lines) == ["[0] ready\n", "[1] ready\n"], lines
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=15)
        assert time.monotonic() - start < 10, "the launcher waited for the processes to end by themselves"
        assert "passing SIGTERM to the 2 processes (again, or 1s from now, to kill them)" in stderr
        assert proc.returncode == 128 + signal.SIGKILL, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
