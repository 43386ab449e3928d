"""Keep the memory the process frees: glibc's allocator tuned at start-up.

On the virtual machines a CPU run often gets, memory that glibc hands back to the system (large blocks are
mmap'ed and unmapped one by one; the heap top is trimmed) is faulted in again page by page at the next step: in
the `nano` workload 7.3M minor page faults and 15–18 s of kernel time in 600 steps. Told to keep freed memory
(no mmap for large blocks, no trimming, 256 MiB of headroom when the heap grows), the same run takes 0.16M faults
and 1.4 s. `llm-jax` applies this at start-up; `LLM_JAX_KEEP_FREED_MEMORY=0` leaves glibc as it is, and a
`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_` or `MALLOC_TOP_PAD_` the user set wins over the setting here.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameters and the values applied: (name, glibc's M_* constant, value, the environment variable that
# sets the same thing).
SETTINGS = (("M_MMAP_MAX", -4, 0, "MALLOC_MMAP_MAX_"),
            ("M_TRIM_THRESHOLD", -1, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),
            ("M_TOP_PAD", -2, 256 * 2**20, "MALLOC_TOP_PAD_"))
OPT_OUT = "LLM_JAX_KEEP_FREED_MEMORY"


def keep_freed_memory() -> list[str]:
    """Apply SETTINGS through mallopt (Linux with glibc only); the names of those applied."""
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return []
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return []
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return [name for name, param, value, env in SETTINGS if env not in os.environ and mallopt(param, value) == 1]
