"""Transformer building blocks: norm, rotary positions, attention, MLP.

Tensor names carry their shape: B batch, L query length, S key length, D model width, H query heads,
G key/value heads, R query heads per kv head (H = G*R), K head dim, F MLP hidden, V vocab.
Every parameter is declared with logical axis names; parallel/ maps them onto the mesh.
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.attention import attend
from llm_jax.models.layout import constrain
from llm_jax.models.mask import Mask, slots_mask

Array = jax.Array


def token_inputs(example: dict, optional: dict[str, str]) -> dict:
    """A decoder's or encoder's arguments from an example (objectives/example.py): tokens, segment ids and
    positions, plus each `optional` array (example name -> argument name) the example has."""
    args = {"tokens_BL": example["inputs"], "segment_ids_BL": example["segment_ids"],
            "positions_BL": example["positions"]}
    return {**args, **{arg: example[name] for name, arg in optional.items() if name in example}}


def weight(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...],
           cfg: FrozenConfigDict, init: Callable | None = None) -> Array:
    """Declare a parameter in param_dtype with logical axes; return it cast to the compute dtype."""
    init = init or nn.initializers.normal(cfg.init_std)
    w = module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))
    if w.dtype == jnp.dtype(cfg.dtype):
        return w
    # Cast each shard where it lies, so that FSDP gathers the compute dtype (half the bytes for bf16) rather than
    # the float32 parameter.
    return constrain(w.astype(cfg.dtype), axes)


def dense(x: Array, w: Array, n_in: int = 1, grad_dtype: str = "float32") -> Array:
    """Contract the last `n_in` axes of x with the first `n_in` of w, as one 2-D matmul over all tokens.

    The same product as an einsum, but with batch and length merged into one axis: the weight gradient then
    contracts a single axis, which XLA's CPU matmuls take as is, while a contraction over (batch, length) makes it
    first write a transposed copy of the activation gradient (a quarter to a third of a CPU step).

    `grad_dtype` (model.grad_reduce_dtype): the dtype the weight gradient leaves its matmul in. Under FSDP or data
    parallelism that matmul's output is what gets summed across devices, so bfloat16 halves the reduce-scatter.
    """
    lead, inner = x.shape[: x.ndim - n_in], w.shape[n_in:]
    x_NI, w_IO = x.reshape(-1, math.prod(w.shape[:n_in])), w.reshape(-1, math.prod(inner))
    matmul = _matmul if jnp.dtype(grad_dtype) == jnp.float32 else functools.partial(_reduced_in, grad_dtype)
    return matmul(x_NI, w_IO).astype(x.dtype).reshape(*lead, *inner)


def _matmul(x_NI: Array, w_IO: Array) -> Array:
    # Accumulate in float32: bf16 x bf16 -> f32 runs as a bf16 matmul on CPUs with AMX or AVX512-BF16, while
    # XLA:CPU turns a dot with a bf16 output into an f32 one, inputs and all.
    return jnp.matmul(x_NI, w_IO, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _reduced_in(grad_dtype: str, x_NI: Array, w_IO: Array) -> Array:
    return _matmul(x_NI, w_IO)


def _reduced_in_fwd(grad_dtype: str, x_NI: Array, w_IO: Array):
    return _matmul(x_NI, w_IO), (x_NI, w_IO)


def _reduced_in_bwd(grad_dtype: str, saved, g_NO: Array):
    x_NI, w_IO = saved
    g_NO = g_NO.astype(x_NI.dtype)  # the output was cast to x's dtype: its cotangent carries no more precision
    dx_NI = jnp.matmul(g_NO, w_IO.T, preferred_element_type=jnp.float32).astype(x_NI.dtype)
    dw_IO = jnp.matmul(x_NI.T, g_NO, preferred_element_type=jnp.dtype(grad_dtype)).astype(w_IO.dtype)
    return dx_NI, dw_IO


_reduced_in.defvjp(_reduced_in_fwd, _reduced_in_bwd)


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


def rope_frequencies(cfg: FrozenConfigDict) -> Array:
    """[K/2] rotation frequencies: theta^(-2i/K), with Llama 3.1's scaling when model.rope_scaling='llama3' (long
    wavelengths slowed by rope_scaling_factor, short ones kept, the band between blended)."""
    half = cfg.head_dim // 2
    freq_k = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if cfg.rope_scaling != "llama3":
        return freq_k
    factor, low, high, old_len = (cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                                  cfg.rope_original_max_len)
    wavelen_k = 2 * jnp.pi / freq_k
    scaled_k = jnp.where(wavelen_k > old_len / low, freq_k / factor, freq_k)
    smooth_k = (old_len / wavelen_k - low) / (high - low)
    blended_k = (1 - smooth_k) * scaled_k / factor + smooth_k * scaled_k
    medium_k = (wavelen_k >= old_len / high) & (wavelen_k <= old_len / low)
    return jnp.where(medium_k, blended_k, scaled_k)


def rope(x_BLHK: Array, positions_BL: Array, freq_k: Array) -> Array:
    """Rotate pairs (x[i], x[i + K/2]) by position-dependent angles (the Llama / NeoX layout)."""
    angle_BLk = positions_BL[..., None].astype(jnp.float32) * freq_k
    sin_BL1k, cos_BL1k = jnp.sin(angle_BLk)[:, :, None], jnp.cos(angle_BLk)[:, :, None]
    x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BL1k - x2 * sin_BL1k, x2 * cos_BL1k + x1 * sin_BL1k], axis=-1)
    return out.astype(x_BLHK.dtype)


def write_cache(cache: tuple[Array, Array], k_BLGK: Array, v_BLGK: Array,
                positions_BL: Array) -> tuple[Array, Array, Mask]:
    """Store this call's keys/values at slots = their positions; returns (k_BSGK, v_BSGK, mask): each row holds
    one document, and a query sees the slots up to its own position (mask.slots_mask)."""
    cache_k_BSGK, cache_v_BSGK = cache
    B = cache_k_BSGK.shape[0]
    rows_B1 = jnp.arange(B)[:, None]
    k_BSGK = cache_k_BSGK.at[rows_B1, positions_BL].set(k_BLGK.astype(cache_k_BSGK.dtype))
    v_BSGK = cache_v_BSGK.at[rows_B1, positions_BL].set(v_BLGK.astype(cache_v_BSGK.dtype))
    k_BSGK = constrain(k_BSGK, ("batch", "length", "kv_heads", "kv"))
    v_BSGK = constrain(v_BSGK, ("batch", "length", "kv_heads", "kv"))
    return k_BSGK, v_BSGK, slots_mask(positions_BL)


def bias(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...],
         cfg: FrozenConfigDict) -> Array:
    """A zero-initialised bias (model.use_bias; q/k/v also model.qkv_bias), cast to the compute dtype."""
    return weight(module, name, shape, axes, cfg, nn.initializers.zeros)


class Attention(nn.Module):
    """Grouped-query attention (G = H is multi-head, G = 1 multi-query) of x over itself or over `kv_BSD`.

    `mask` says which keys each query sees (mask.py). With `cache` = (k_BSGK,
    v_BSGK) of the earlier tokens, this call's keys/values are written at slots `positions_BL` and the mask comes
    from the cache. With `fixed_kv`, those keys/values are used as they are (a cross-attention cache computed
    once). `bias_BHLS` is added to the scores (T5's relative positions; B may be 1). Returns (out_BLD, (k_BSGK,
    v_BSGK)): the keys/values attended over, which are the updated cache when `cache` is given.
    """

    cfg: FrozenConfigDict
    scale_scores: bool = True  # T5 folds 1/sqrt(head_dim) into its initialisation instead

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask | None, positions_BL: Array | None = None, *,
                 kv_BSD: Array | None = None, cache: tuple[Array, Array] | None = None,
                 fixed_kv: tuple[Array, Array] | None = None,
                 bias_BHLS: Array | None = None) -> tuple[Array, tuple[Array, Array]]:
        c = self.cfg
        D, H, G, K = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
        out_init = nn.initializers.normal(c.init_std / (2 * c.num_layers) ** 0.5)  # GPT-2 residual scaling
        # Unscaled scores take 1/sqrt(K) in the queries' initialisation instead (T5), so both start as one function.
        q_init = None if self.scale_scores else nn.initializers.normal(c.init_std * K**-0.5)
        wq_DHK = weight(self, "wq", (D, H, K), ("embed", "heads", "kv"), c, q_init)
        wk_DGK = weight(self, "wk", (D, G, K), ("embed", "kv_heads", "kv"), c)
        wv_DGK = weight(self, "wv", (D, G, K), ("embed", "kv_heads", "kv"), c)
        wo_HKD = weight(self, "wo", (H, K, D), ("heads", "kv", "embed"), c, out_init)
        rope_kv = c.positions == "rope" and kv_BSD is None and fixed_kv is None  # self-attention only

        q_BLHK = dense(x_BLD, wq_DHK, grad_dtype=c.grad_reduce_dtype)
        if fixed_kv is None:
            k_BSGK = dense(x_BLD if kv_BSD is None else kv_BSD, wk_DGK, grad_dtype=c.grad_reduce_dtype)
            v_BSGK = dense(x_BLD if kv_BSD is None else kv_BSD, wv_DGK, grad_dtype=c.grad_reduce_dtype)
        else:
            k_BSGK, v_BSGK = fixed_kv
        if c.use_bias or c.qkv_bias:
            q_BLHK = q_BLHK + bias(self, "bq", (H, K), ("heads", "kv"), c)
            bk_GK = bias(self, "bk", (G, K), ("kv_heads", "kv"), c)
            bv_GK = bias(self, "bv", (G, K), ("kv_heads", "kv"), c)
            if fixed_kv is None:
                k_BSGK, v_BSGK = k_BSGK + bk_GK, v_BSGK + bv_GK
        if c.qk_norm:
            q_BLHK = Norm(c, axis_name="kv", name="q_norm")(q_BLHK)
            if fixed_kv is None:
                k_BSGK = Norm(c, axis_name="kv", name="k_norm")(k_BSGK)
        if rope_kv:
            freq_k = rope_frequencies(c)
            q_BLHK = rope(q_BLHK, positions_BL, freq_k)
            k_BSGK = rope(k_BSGK, positions_BL, freq_k)
        q_BLHK = constrain(q_BLHK, ("batch", "length", "heads", "kv"))
        if cache is not None:  # S is now the cache length; the new keys/values (S = L above) go into it
            k_BSGK, v_BSGK, mask = write_cache(cache, k_BSGK, v_BSGK, positions_BL)

        out_BLHK = attend(q_BLHK, k_BSGK, v_BSGK, mask, c, scale=K**-0.5 if self.scale_scores else None,
                          bias_BHLS=bias_BHLS, self_attention=kv_BSD is None and fixed_kv is None,
                          cached=cache is not None)
        out_BLHK = constrain(out_BLHK, ("batch", "length", "heads", "kv"))
        out_BLD = dense(out_BLHK, wo_HKD, n_in=2, grad_dtype=c.grad_reduce_dtype)
        if c.use_bias:
            out_BLD = out_BLD + bias(self, "bo", (D,), ("embed",), c)
        return out_BLD, (k_BSGK, v_BSGK)


class Mlp(nn.Module):
    """Feed-forward: gated (SwiGLU as in Llama, GeGLU as in T5 v1.1) or plain (GELU: GPT-2's tanh form, BERT's erf;
    ReLU: the original T5)."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        c = self.cfg
        D, F = c.d_model, c.mlp_dim
        out_init = nn.initializers.normal(c.init_std / (2 * c.num_layers) ** 0.5)

        def project(name: str) -> Array:
            h_BLF = dense(x_BLD, weight(self, name, (D, F), ("embed", "mlp"), c), grad_dtype=c.grad_reduce_dtype)
            return h_BLF + bias(self, f"b{name[1:]}", (F,), ("mlp",), c) if c.use_bias else h_BLF

        if c.mlp in ("swiglu", "geglu"):
            act = jax.nn.silu if c.mlp == "swiglu" else jax.nn.gelu
            h_BLF = act(project("wi_gate")) * project("wi_up")
        elif c.mlp == "relu":
            h_BLF = jax.nn.relu(project("wi"))
        else:
            h_BLF = jax.nn.gelu(project("wi"), approximate=c.mlp == "gelu")
        h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
        out_BLD = dense(h_BLF, weight(self, "wo", (F, D), ("mlp", "embed"), c, out_init),
                        grad_dtype=c.grad_reduce_dtype)
        return out_BLD + bias(self, "bo", (D,), ("embed",), c) if c.use_bias else out_BLD
