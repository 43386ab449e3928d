"""The attention core, softmax(q k^T * scale + bias) v under a mask, by the implementation `model.attention` names.

  xla      the scores as one float32 [B, G, R, L, S] array: the reference, and the fastest for short sequences.
  chunked  blockwise with an online softmax (chunked.py): memory grows with L + S, not L x S. Any backend.
  cudnn    cuDNN's fused flash attention (NVIDIA GPUs, bfloat16/float16).
  splash   the Pallas splash-attention kernel (TPUs; in Pallas' interpreter elsewhere, for tests).
  auto     splash on TPU, cudnn on GPU (bf16/f16 compute), and xla or chunked by length elsewhere.

A fused kernel covers what it can express and hands the rest to `chunked`, never to a path that would drop the
mask: splash takes self-attention with causal or document masks (not a prefix LM's prefix, a position bias,
cross-attention or a KV cache, whose masks are not static); cuDNN takes everything but the KV cache, whose
one-token decode steps use xla.
"""

import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.chunked import chunked_attention
from llm_jax.models.kernels import SplashOptions, cudnn_attention, splash_attention, supports_splash
from llm_jax.models.mask import Mask

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
FUSED_DTYPES = ("bfloat16", "float16")  # what cuDNN's flash attention computes in
FUSED = ("cudnn", "splash")  # kernels that keep their blocks in on-chip memory
KERNEL_PLATFORM = {"cudnn": "gpu", "splash": "tpu"}  # where each fused kernel runs (splash elsewhere: interpreted)


def resolve(cfg: FrozenConfigDict, platform: str, S: int) -> str:
    """The implementation `model.attention` stands for on `platform` ('cpu', 'gpu', 'tpu') for S keys."""
    if cfg.attention != "auto":
        return cfg.attention
    if platform == "tpu":
        return "splash"
    if platform == "gpu" and cfg.dtype in FUSED_DTYPES:
        return "cudnn"
    return "chunked" if cfg.attention_chunked_from <= S else "xla"


def xla_attention(q_BLHK: Array, k_BSGK: Array, v_BSGK: Array, mask: Mask, *, scale: float | None,
                  bias_BHLS: Array | None, dtype) -> Array:
    """The scores whole, in float32. `scale=None` leaves them unscaled (T5)."""
    B, L, H, K = q_BLHK.shape
    S, G = k_BSGK.shape[1], k_BSGK.shape[2]
    q_BLGRK = q_BLHK.reshape(B, L, G, H // G, K)
    scores_BGRLS = jnp.einsum("BLGRK,BSGK->BGRLS", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32)
    if scale is not None:
        scores_BGRLS = scores_BGRLS * scale
    if bias_BHLS is not None:
        scores_BGRLS = scores_BGRLS + bias_BHLS.astype(jnp.float32).reshape(-1, G, H // G, L, S)
    mask_B11LS = mask.dense(L, S)[:, None, None]
    # A large finite negative (not -inf) keeps fully masked rows (padding) finite instead of NaN.
    scores_BGRLS = jnp.where(mask_B11LS, scores_BGRLS, jnp.finfo(jnp.float32).min)
    probs_BGRLS = jax.nn.softmax(scores_BGRLS, axis=-1).astype(dtype)
    out_BLGRK = jnp.einsum("BGRLS,BSGK->BLGRK", probs_BGRLS, v_BSGK, preferred_element_type=jnp.float32)
    return out_BLGRK.astype(dtype).reshape(B, L, H, K)


def attend(q_BLHK: Array, k_BSGK: Array, v_BSGK: Array, mask: Mask, cfg: FrozenConfigDict, *,
           scale: float | None, bias_BHLS: Array | None = None, self_attention: bool = True,
           cached: bool = False) -> Array:
    """out_BLHK in the compute dtype. `cached`: keys/values come from a KV cache (generation)."""
    platform = jax.default_backend()
    impl = resolve(cfg, platform, k_BSGK.shape[1])
    if impl == "splash" and (cached or not supports_splash(mask, bias_BHLS, self_attention)):
        impl = "chunked"
    if impl == "cudnn" and cached:
        impl = "xla"
    if impl == "xla":
        return xla_attention(q_BLHK, k_BSGK, v_BSGK, mask, scale=scale, bias_BHLS=bias_BHLS, dtype=cfg.dtype)
    factor = 1.0 if scale is None else scale
    if impl == "chunked":
        out_BLHK = chunked_attention(q_BLHK, k_BSGK, v_BSGK, mask, scale=factor, bias_BHLS=bias_BHLS,
                                     block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv)
    elif impl == "cudnn":
        if platform != "gpu":
            raise ValueError(f"model.attention=cudnn needs an NVIDIA GPU but JAX runs on {platform}; use "
                             "model.attention=auto (or xla / chunked)")
        out_BLHK = cudnn_attention(q_BLHK, k_BSGK, v_BSGK, mask, scale=factor, bias_BHLS=bias_BHLS)
    else:
        options = SplashOptions(cfg.attention_block_q, cfg.attention_block_kv, interpret=platform != "tpu")
        out_BLHK = splash_attention(q_BLHK, k_BSGK, v_BSGK, mask, scale=factor, options=options)
    return out_BLHK.astype(cfg.dtype)
