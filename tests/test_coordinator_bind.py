"""A local multi-process rehearsal (coordinator on 127.0.0.1) keeps jax.distributed's coordination service on the
loopback interface: two real processes join through init_runtime, and process 0 reads the kernel's socket table."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_multiprocess_data import _free_port

# Process 0 lists the addresses that listen on the coordinator's port, from /proc/net/tcp and /proc/net/tcp6
# (hex addresses in the kernel's byte order: each 32-bit word little-endian on x86 and arm).
WORKER = """
import ipaddress, json, sys
from llm_jax.config.base import base_config
from llm_jax.parallel.runtime import init_runtime

port, rank = int(sys.argv[1]), int(sys.argv[2])
cfg = base_config()
cfg.runtime.coordinator_address, cfg.runtime.num_processes, cfg.runtime.process_id = f"127.0.0.1:{port}", 2, rank
cfg.runtime.init_timeout_s = 60
init_runtime(cfg)
if rank == 0:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
                ip = ipaddress.ip_address(raw)
                found.append(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC lists 127.0.0.1 as ::ffff:7f00:1
    print("LISTEN " + json.dumps(found))
"""


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net socket tables")
def test_a_loopback_coordinator_listens_on_loopback_only():
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COORDINATOR_BIND_ADDRESS", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    listening = json.loads(next(line for line in logs[0].splitlines() if line.startswith("LISTEN "))[7:])
    assert listening == ["127.0.0.1"], listening  # not 0.0.0.0 nor ::


def test_the_bind_address_is_loopback_only_for_a_loopback_coordinator(monkeypatch):
    from llm_jax.parallel.runtime import bind_address

    monkeypatch.delenv("JAX_COORDINATOR_BIND_ADDRESS", raising=False)
    assert bind_address("127.0.0.1:1234", "") == "127.0.0.1:1234"
    assert bind_address("127.5.0.9:1234", "") == "127.5.0.9:1234"
    assert bind_address("localhost:80", "") == "localhost:80"
    assert bind_address("[::1]:1234", "") == "[::1]:1234"
    assert bind_address("10.0.0.2:1234", "") is None  # jax's default: every interface, as other hosts connect
    assert bind_address("node-0.cluster:1234", "") is None
    assert bind_address("", "") is None  # a cluster jax detects itself
    assert bind_address("10.0.0.2:1234", "10.0.0.2:1234") == "10.0.0.2:1234"  # an explicit value is kept
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", "[::]:1234")
    assert bind_address("127.0.0.1:1234", "") is None  # the user's environment wins, through jax
