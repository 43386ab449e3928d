"""Transformer building blocks: norm, rotary positions, attention, MLP.

Tensor names carry their shape: B batch, L query length, S key length, D model width, H query heads,
G key/value heads, R query heads per kv head (H = G*R), K head dim, F MLP hidden, V vocab.
Every parameter is declared with logical axis names; parallel/ maps them onto the mesh.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

Array = jax.Array


def constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
    """Pin an activation's layout by logical names; a no-op unless the caller set a mesh and axis rules."""
    return nn.with_logical_constraint(x, axes)


def weight(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...],
           cfg: FrozenConfigDict, init: Callable | None = None) -> Array:
    """Declare a parameter in param_dtype with logical axes; return it cast to the compute dtype."""
    init = init or nn.initializers.normal(cfg.init_std)
    w = module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))
    return w.astype(cfg.dtype)


def dense(x: Array, w: Array, n_in: int = 1) -> Array:
    """Contract the last `n_in` axes of x with the first `n_in` of w, as one 2-D matmul over all tokens.

    The same product as an einsum, but with batch and length merged into one axis: the weight gradient then
    contracts a single axis, which XLA's CPU matmuls take as is, while a contraction over (batch, length) makes it
    first write a transposed copy of the activation gradient (a quarter to a third of a CPU step).
    """
    lead, inner = x.shape[: x.ndim - n_in], w.shape[n_in:]
    x_NI, w_IO = x.reshape(-1, math.prod(w.shape[:n_in])), w.reshape(-1, math.prod(inner))
    # Accumulate in float32: bf16 x bf16 -> f32 runs as a bf16 matmul on CPUs with AMX or AVX512-BF16, while
    # XLA:CPU turns a dot with a bf16 output into an f32 one, inputs and all.
    y_NO = jnp.matmul(x_NI, w_IO, preferred_element_type=jnp.float32).astype(x.dtype)
    return y_NO.reshape(*lead, *inner)


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis, computed in float32 for stability."""

    cfg: FrozenConfigDict
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.cfg
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.dtype(c.param_dtype))
        x32 = x.astype(jnp.float32)
        if c.norm == "layernorm":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + c.norm_eps) * scale.astype(jnp.float32)
        if c.norm == "layernorm":
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
                              (x.shape[-1],), jnp.dtype(c.param_dtype))
            y = y + bias.astype(jnp.float32)
        return y.astype(c.dtype)


def rope(x_BLHK: Array, positions_BL: Array, theta: float) -> Array:
    """Rotate pairs (x[i], x[i + K/2]) by position-dependent angles (the Llama / NeoX layout)."""
    half = x_BLHK.shape[-1] // 2
    freq_k = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BLk = positions_BL[..., None].astype(jnp.float32) * freq_k
    sin_BL1k, cos_BL1k = jnp.sin(angle_BLk)[:, :, None], jnp.cos(angle_BLk)[:, :, None]
    x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BL1k - x2 * sin_BL1k, x2 * cos_BL1k + x1 * sin_BL1k], axis=-1)
    return out.astype(x_BLHK.dtype)


def attention_mask(segment_ids_BL: Array) -> Array:
    """[B, L, S] True where query L may see key S: causal, and only inside its own packed document."""
    L = segment_ids_BL.shape[1]
    causal_LS = jnp.tril(jnp.ones((L, L), dtype=bool))
    same_doc_BLS = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
    return causal_LS[None] & same_doc_BLS


def write_cache(cache: tuple[Array, Array], k_BLGK: Array, v_BLGK: Array,
                positions_BL: Array) -> tuple[Array, Array, Array]:
    """Store this call's keys/values at slots = their positions; returns (k_BSGK, v_BSGK, mask_BLS).

    Each row holds one document, so a query sees every slot up to its own position: that covers the prompt and
    the tokens decoded so far, while slots past it (right padding, stale values) stay hidden.
    """
    cache_k_BSGK, cache_v_BSGK = cache
    B, S = cache_k_BSGK.shape[:2]
    rows_B1 = jnp.arange(B)[:, None]
    k_BSGK = cache_k_BSGK.at[rows_B1, positions_BL].set(k_BLGK.astype(cache_k_BSGK.dtype))
    v_BSGK = cache_v_BSGK.at[rows_B1, positions_BL].set(v_BLGK.astype(cache_v_BSGK.dtype))
    k_BSGK = constrain(k_BSGK, ("batch", "length", "kv_heads", "kv"))
    v_BSGK = constrain(v_BSGK, ("batch", "length", "kv_heads", "kv"))
    mask_BLS = jnp.arange(S)[None, None, :] <= positions_BL[:, :, None]
    return k_BSGK, v_BSGK, mask_BLS


class Attention(nn.Module):
    """Causal grouped-query self-attention (G = H is multi-head, G = 1 multi-query).

    With `cache` = (k_BSGK, v_BSGK) of the earlier tokens, attends over the cache and returns (out, new cache).
    """

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, segment_ids_BL: Array, positions_BL: Array,
                 cache: tuple[Array, Array] | None = None) -> Array | tuple[Array, tuple[Array, Array]]:
        c = self.cfg
        D, H, G, K = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
        B, L, _ = x_BLD.shape
        out_init = nn.initializers.normal(c.init_std / (2 * c.num_layers) ** 0.5)  # GPT-2 residual scaling
        wq_DHK = weight(self, "wq", (D, H, K), ("embed", "heads", "kv"), c)
        wk_DGK = weight(self, "wk", (D, G, K), ("embed", "kv_heads", "kv"), c)
        wv_DGK = weight(self, "wv", (D, G, K), ("embed", "kv_heads", "kv"), c)
        wo_HKD = weight(self, "wo", (H, K, D), ("heads", "kv", "embed"), c, out_init)

        q_BLHK = dense(x_BLD, wq_DHK)
        k_BSGK = dense(x_BLD, wk_DGK)
        v_BSGK = dense(x_BLD, wv_DGK)
        if c.qk_norm:
            q_BLHK = Norm(c, axis_name="kv", name="q_norm")(q_BLHK)
            k_BSGK = Norm(c, axis_name="kv", name="k_norm")(k_BSGK)
        if c.positions == "rope":
            q_BLHK = rope(q_BLHK, positions_BL, c.rope_theta)
            k_BSGK = rope(k_BSGK, positions_BL, c.rope_theta)
        q_BLHK = constrain(q_BLHK, ("batch", "length", "heads", "kv"))
        if cache is None:
            mask_BLS = attention_mask(segment_ids_BL)
        else:  # S is now the cache length; the new keys/values (S = L above) go into it
            k_BSGK, v_BSGK, mask_BLS = write_cache(cache, k_BSGK, v_BSGK, positions_BL)

        q_BLGRK = q_BLHK.reshape(B, L, G, H // G, K)
        scores_BGRLS = jnp.einsum("BLGRK,BSGK->BGRLS", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32) * K**-0.5
        mask_B11LS = mask_BLS[:, None, None]
        # A large finite negative (not -inf) keeps fully masked rows (padding) finite instead of NaN.
        scores_BGRLS = jnp.where(mask_B11LS, scores_BGRLS, jnp.finfo(jnp.float32).min)
        probs_BGRLS = jax.nn.softmax(scores_BGRLS, axis=-1).astype(c.dtype)
        out_BLGRK = jnp.einsum("BGRLS,BSGK->BLGRK", probs_BGRLS, v_BSGK,
                               preferred_element_type=jnp.float32).astype(c.dtype)
        out_BLHK = constrain(out_BLGRK.reshape(B, L, H, K), ("batch", "length", "heads", "kv"))
        out_BLD = dense(out_BLHK, wo_HKD, n_in=2)
        return out_BLD if cache is None else (out_BLD, (k_BSGK, v_BSGK))


class Mlp(nn.Module):
    """SwiGLU (Llama) or GELU (GPT-2) feed-forward."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        c = self.cfg
        D, F = c.d_model, c.mlp_dim
        out_init = nn.initializers.normal(c.init_std / (2 * c.num_layers) ** 0.5)
        if c.mlp == "swiglu":
            gate_BLF = dense(x_BLD, weight(self, "wi_gate", (D, F), ("embed", "mlp"), c))
            up_BLF = dense(x_BLD, weight(self, "wi_up", (D, F), ("embed", "mlp"), c))
            h_BLF = jax.nn.silu(gate_BLF) * up_BLF
        else:
            h_BLF = jax.nn.gelu(dense(x_BLD, weight(self, "wi", (D, F), ("embed", "mlp"), c)))
        h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
        return dense(h_BLF, weight(self, "wo", (F, D), ("mlp", "embed"), c, out_init))
