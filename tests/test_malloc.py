"""llm-jax keeps the memory it frees (llm_jax/malloc.py): a freed 64 MiB block is reused without page faults,
unless LLM_JAX_KEEP_FREED_MEMORY=0 or the user set glibc's own variable."""

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, resource
from llm_jax.malloc import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 64 * 2**20
def cycle():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
cycle()  # the first touch faults in any case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def child(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LLM_JAX_KEEP_FREED_MEMORY"}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**clean, **env}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_blocks_are_reused_by_default_and_returned_with_the_opt_out():
    kept, returned = child(), child(LLM_JAX_KEEP_FREED_MEMORY="0")
    pages = 5 * 64 * 2**20 // 4096  # five 64 MiB blocks touched page by page
    assert kept["applied"] == ["M_MMAP_MAX", "M_TRIM_THRESHOLD", "M_TOP_PAD"] and returned["applied"] == []
    assert returned["faults"] > pages / 2, returned  # glibc maps and unmaps each block: every page faults again
    assert kept["faults"] < pages / 20, kept
    # A setting the user made in glibc's own variable wins: that one is left alone.
    assert child(MALLOC_MMAP_MAX_="65536")["applied"] == ["M_TRIM_THRESHOLD", "M_TOP_PAD"]
