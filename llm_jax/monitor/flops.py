"""Model FLOPs per token and the matmul peak a CPU actually reaches, for MFU.

Training FLOPs per token (the PaLM appendix B formula, no causal discount, 3x forward for forward + backward):

    6 * N_matmul + 12 * num_layers * num_heads * head_dim * seq_len

N_matmul counts the weights that take part in a matmul: per layer the q/k/v/o projections and the MLP
(3 matrices for SwiGLU, 2 for GELU), plus the output projection (the embedding matrix again when tied).
The input embedding lookup and norms are not matmuls and are not counted. The second term is the attention
scores (Q K^T) and the weighted sum (P V). Remat recomputation is not model FLOPs and is not counted.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections


def matmul_params(m: ml_collections.ConfigDict) -> int:
    attn = m.d_model * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = (3 if m.mlp == "swiglu" else 2) * m.d_model * m.mlp_dim
    return m.num_layers * (attn + mlp) + m.d_model * m.vocab_size


def flops_per_token(m: ml_collections.ConfigDict, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a finalized `config.model`."""
    return 6.0 * matmul_params(m) + 12.0 * m.num_layers * m.num_heads * m.head_dim * seq_len


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
