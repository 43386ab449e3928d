"""Fused attention kernels of the accelerators: cuDNN's (NVIDIA GPUs) and Pallas splash attention (TPUs).

Both take packed documents into account: cuDNN through the mask (segment ids as a boolean mask, causality as its
own flag so that it skips the upper triangle), splash through its native segment ids. Queries arrive as
[B, L, H, K] and keys/values as [B, S, G, K]; grouped-query attention is passed as such (cuDNN) or as a
multi-query kernel per kv head (splash), so K/V are never repeated.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from llm_jax.models.mask import Mask

Array = jax.Array


def cudnn_attention(q_BLHK: Array, k_BSGK: Array, v_BSGK: Array, mask: Mask, *, scale: float,
                    bias_BHLS: Array | None = None, implementation: str = "cudnn") -> Array:
    """jax.nn.dot_product_attention with cuDNN's flash kernel. `implementation='xla'` runs the same call through
    XLA (how the call itself is checked on machines without a GPU)."""
    L, S = q_BLHK.shape[1], k_BSGK.shape[1]
    is_causal = mask.causal_by_index and mask.prefix_BS is None
    rest = dataclasses.replace(mask, q_index_BL=None, causal_by_index=False) if is_causal else mask
    needs_mask = rest.segmented or rest.q_index_BL is not None
    mask_B1LS = rest.dense(L, S)[:, None] if needs_mask else None
    return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, bias=bias_BHLS, mask=mask_B1LS, scale=scale,
                                        is_causal=is_causal, implementation=implementation)


@dataclasses.dataclass(frozen=True)
class SplashOptions:
    block_q: int = 512
    block_kv: int = 512
    interpret: bool = False  # run the kernel in Pallas' interpreter (any backend; slow: for tests)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _kernel(R: int, Lp: int, causal: bool, bq: int, bk: int, interpret: bool):
    """A multi-query kernel for R query heads over one kv head (built once per shape: its mask is static)."""
    one = splash_mask.CausalMask((Lp, Lp)) if causal else splash_mask.FullMask((Lp, Lp))
    sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                              block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    return splash.make_splash_mqa(splash_mask.MultiHeadMask([one] * R), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)


def supports_splash(mask: Mask, bias: Array | None, self_attention: bool) -> bool:
    """Splash's mask is static (causal or full) plus segment ids: no prefix LM, no position bias, and only
    self-attention (where every query sees at least itself, as the kernel requires)."""
    return self_attention and bias is None and mask.prefix_BS is None and (
        mask.causal_by_index or mask.q_index_BL is None)


def splash_attention(q_BLHK: Array, k_BSGK: Array, v_BSGK: Array, mask: Mask, *, scale: float,
                     options: SplashOptions) -> Array:
    """Self-attention of packed rows through the splash kernel; L is padded to the block size (the padding is a
    document of its own, so no real query sees it). On a mesh the kernel runs per shard (shard_map over the
    batch and head axes the logical rules give)."""
    B, L, H, K = q_BLHK.shape
    G = k_BSGK.shape[2]
    R = H // G
    bq = min(options.block_q, _round_up(L, 128))
    bk = min(options.block_kv, _round_up(L, 128))
    Lp = _round_up(L, max(bq, bk))
    seg_BL = mask.q_segment_ids_BL if mask.segmented else jnp.zeros((B, L), jnp.int32)
    seg_BL = jnp.broadcast_to(seg_BL, (B, L)).astype(jnp.int32)
    pad_id = jnp.min(seg_BL) - 1  # a segment no real token has
    seg_BL = jnp.concatenate([seg_BL, jnp.broadcast_to(pad_id, (B, Lp - L)).astype(jnp.int32)], axis=1)
    pad = ((0, 0), (0, Lp - L), (0, 0), (0, 0))
    q_BGRLK = jnp.pad(q_BLHK * scale, pad).reshape(B, Lp, G, R, K).transpose(0, 2, 3, 1, 4)
    k_BGSK = jnp.pad(k_BSGK, pad).transpose(0, 2, 1, 3)
    v_BGSK = jnp.pad(v_BSGK, pad).transpose(0, 2, 1, 3)
    kernel = _kernel(R, Lp, mask.causal_by_index, bq, bk, options.interpret)

    def per_shard(q_BGRLK, k_BGSK, v_BGSK, seg_BL):
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
        return jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q_BGRLK, k_BGSK, v_BGSK, splash.SegmentIds(seg_BL, seg_BL))

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        q_spec = nn.logical_to_mesh_axes(("batch", "kv_heads", None, "length", "kv"))
        kv_spec = nn.logical_to_mesh_axes(("batch", "kv_heads", "length", "kv"))
        seg_spec = nn.logical_to_mesh_axes(("batch", "length"))
        per_shard = jax.shard_map(per_shard, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                                  check_vma=False)
    out_BGRLK = per_shard(q_BGRLK, k_BGSK, v_BGSK, seg_BL)
    return out_BGRLK.transpose(0, 3, 1, 2, 4).reshape(B, Lp, H, K)[:, :L].astype(v_BSGK.dtype)
