"""Model FLOPs per token and peak FLOP/s, for MFU (model FLOPs utilisation = achieved model FLOP/s / peak).

Training FLOPs per token, as each model family counts them (models/families.py). For a decoder (the PaLM appendix
B formula, no causal discount, 3x forward for forward + backward):

    6 * N_matmul + 12 * num_layers * num_heads * head_dim * seq_len

N_matmul counts the weights that take part in a matmul: per layer the q/k/v/o projections and the MLP
(3 matrices for SwiGLU, 2 for GELU), plus the output projection (the embedding matrix again when tied).
The input embedding lookup and norms are not matmuls and are not counted. The second term is the attention
scores (Q K^T) and the weighted sum (P V). Remat recomputation is not model FLOPs and is not counted.

Peaks: accelerators from a table of dense bf16 FLOP/s per JAX device (the usual MFU denominator, whatever the
compute dtype); CPUs by timing a matmul in the compute dtype, since their speed varies too much for a table.
`monitor.peak_tflops` overrides both.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections

from llm_jax import models

# (substring of jax's device_kind, dense bf16 FLOP/s per JAX device), most specific first. TPU v2/v3 expose each
# core as a device; later TPUs one device per chip.
PEAK_FLOPS_BY_KIND = (
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v4", 275e12),
    ("TPU v3", 61.5e12),
    ("TPU v2", 22.5e12),
    ("B200", 2250e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # and GH200
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),
)


def table_peak(device_kind: str) -> float | None:
    for kind, flops in PEAK_FLOPS_BY_KIND:
        if kind.lower() in device_kind.lower():
            return flops
    return None


def peak_flops(mesh_devices, dtype: str, peak_tflops: float = 0.0, cpu_matmul: int = 1024) -> tuple[float, str]:
    """Total peak FLOP/s of the devices a run uses, and where the figure came from (for the log). On CPU, a
    `cpu_matmul`-sized square matmul is timed (1024: a tenth of a second; the benchmark uses a larger one)."""
    devices = list(mesh_devices)
    if peak_tflops > 0:
        return peak_tflops * 1e12 * len(devices), "monitor.peak_tflops"
    if devices[0].platform == "cpu":
        # CPU devices of one process share its cores (fake devices split one CPU), so the peak is per process.
        processes = len({d.process_index for d in devices})
        return measure_matmul_peak(dtype, n=cpu_matmul, repeats=3, device=devices[0]) * processes, \
            f"a {dtype} matmul timed now"
    flops = table_peak(devices[0].device_kind)
    if flops is None:
        return 0.0, f"unknown device kind '{devices[0].device_kind}': set monitor.peak_tflops to log MFU"
    return flops * len(devices), f"the bf16 peak of {devices[0].device_kind}"


def flops_per_token(m: ml_collections.ConfigDict, seq_len: int, target_len: int = 0) -> float:
    """Training (forward + backward) FLOPs per input token of a finalized `config.model`, as its family counts
    them (models/families.py; `target_len`: an encoder-decoder example's decoder length)."""
    return models.flops_per_token(m, seq_len, target_len)


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5,
                        device: jax.Device | None = None) -> float:
    """FLOP/s of the best of `repeats` square matmuls on one device: a same-run peak for CPU MFU."""
    device = device or jax.devices()[0]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype), device)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
