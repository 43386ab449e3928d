"""Host and device memory, for the system/ TensorBoard tags."""

import resource
import sys

import jax


def host_memory_bytes() -> int:
    """Resident memory of this process now (Linux), or its peak where /proc is missing (macOS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def device_memory_bytes() -> dict[str, float]:
    """Bytes in use and the peak on the busiest local device, where the backend reports them (GPU, TPU; not CPU)."""
    stats = [s for s in (d.memory_stats() for d in jax.local_devices()) if s]
    if not stats:
        return {}
    out = {"device_memory_bytes": max(s.get("bytes_in_use", 0) for s in stats)}
    if any("peak_bytes_in_use" in s for s in stats):
        out["device_memory_peak_bytes"] = max(s.get("peak_bytes_in_use", 0) for s in stats)
    return out
