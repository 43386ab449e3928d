"""What one device of each kind has: memory, memory bandwidth, and network bandwidth inside and across nodes.

Public spec-sheet numbers (NVIDIA datasheets, Cloud TPU system-architecture pages), per device and one direction;
a planner multiplies them out, so they only need to be right to a few percent. Peak FLOP/s are not repeated here:
they come from `PEAK_FLOPS_BY_KIND` in monitor/flops.py, looked up by the device kind JAX would report.

ICI (NVLink inside a GPU node, the chip-to-chip torus inside a TPU slice) is the aggregate over a device's links;
a collective over one torus axis uses only some of them, so ICI times from these figures are optimistic. DCN
(InfiniBand across GPU nodes, the data-centre network across TPU slices) is the share of one device.
"""

import dataclasses
import os

from llm_jax.monitor.flops import measure_matmul_peak, table_peak


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str  # for people
    device_kind: str  # as jax.Device.device_kind names it: the key into flops.py's peak table
    hbm_gib: float
    hbm_gbps: float  # memory bandwidth, GB/s
    ici_gbps: float  # GB/s per device, one direction, inside a node / slice
    dcn_gbps: float  # GB/s per device, one direction, across nodes / slices
    measured_peak: float = 0.0  # FLOP/s per device when measured here (CPUs) instead of looked up

    @property
    def platform(self) -> str:
        """JAX's platform name for this device: 'gpu', 'tpu' or 'cpu'."""
        return "gpu" if self.device_kind.startswith("NVIDIA") else "tpu" if self.device_kind.startswith("TPU") \
            else "cpu"

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per device (0 when unknown)."""
        return self.measured_peak or table_peak(self.device_kind) or 0.0


GIB = 2**30

HARDWARE = {
    # H100 SXM: NVLink 4 is 900 GB/s both ways; one 400 Gb/s InfiniBand NIC per GPU.
    "h100": Hardware("H100 SXM 80GB", "NVIDIA H100 80GB HBM3", 80, 3350, 450, 50),
    "h200": Hardware("H200 SXM 141GB", "NVIDIA H200", 141, 4800, 450, 50),
    # A100 SXM 80GB: NVLink 3 is 600 GB/s both ways; one 200 Gb/s HDR NIC per GPU.
    "a100": Hardware("A100 SXM 80GB", "NVIDIA A100-SXM4-80GB", 80, 2039, 300, 25),
    # TPUs. ICI: v4 6 links (2400 Gb/s per chip); v5e 400, v5p 1200, v6e 800 GB/s per chip both ways. DCN: v5p
    # documents 50 Gb/s per chip; the others take the ~25 GB/s per host of 4 chips usual for multislice.
    "tpu_v4": Hardware("TPU v4", "TPU v4", 32, 1200, 300, 6.25),
    "tpu_v5e": Hardware("TPU v5e", "TPU v5 lite", 16, 819, 200, 6.25),
    "tpu_v5p": Hardware("TPU v5p", "TPU v5p", 95, 2765, 600, 6.25),
    "tpu_v6e": Hardware("TPU v6e (Trillium)", "TPU v6 lite", 32, 1640, 400, 6.25),
}

# Topology preset name prefixes -> device kind. gpu_1 and gpu_cluster do not say which GPU: H100 is assumed.
PRESET_KINDS = (("h100", "h100"), ("h200", "h200"), ("a100", "a100"), ("gpu", "h100"), ("tpu_v4", "tpu_v4"),
                ("tpu_v5e", "tpu_v5e"), ("tpu_v5p", "tpu_v5p"), ("tpu_v6e", "tpu_v6e"), ("cpu", "cpu"))
KINDS = (*HARDWARE, "cpu")


def kind_for_preset(topology: str) -> tuple[str | None, str]:
    """The device kind a topology preset is for, and a note when that is an assumption (None: unknown)."""
    for prefix, kind in PRESET_KINDS:
        if topology.startswith(prefix):
            assumed = prefix == "gpu" and kind == "h100"
            return kind, (f"topology '{topology}' does not name its GPU: H100 assumed (--device-kind to change)"
                          if assumed else "")
    return None, ""


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_hardware(num_devices: int, dtype: str = "float32") -> Hardware:
    """This machine's CPU split into `num_devices` fake devices: each gets an equal share of the RAM and of a
    matmul peak timed now. The bandwidths are rough placeholders (one DDR channel's worth); CPU plans are
    rehearsals, not forecasts."""
    peak = measure_matmul_peak(dtype, n=1024, repeats=3) / num_devices
    return Hardware("this CPU", "cpu", physical_memory_bytes() / GIB / num_devices, 20, 20, 20, measured_peak=peak)


def hardware(kind: str, num_devices: int = 1, dtype: str = "float32") -> Hardware:
    if kind == "cpu":
        return cpu_hardware(num_devices, dtype)
    if kind not in HARDWARE:
        raise ValueError(f"unknown device kind '{kind}'; choose one of: {', '.join(KINDS)}")
    return HARDWARE[kind]
