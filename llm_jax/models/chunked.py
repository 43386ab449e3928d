"""Blockwise attention in plain JAX (FlashAttention's algorithm): the [L, S] scores never exist whole.

Queries go in blocks of `block_q`, keys in blocks of `block_kv`. The forward pass keeps, per query, the running
maximum and normaliser of its scores (online softmax) and saves only the output and the log-normaliser; the
backward pass recomputes each block's probabilities from them (custom VJP) instead of storing them, so memory
grows with L + S, not L x S. Masks are built per block from the structure in mask.py; with packed causal masks the
blocks above the diagonal are skipped. Grouped-query attention contracts each kv head with its R query heads
directly (K/V are never repeated).
"""

import functools
import math

import jax
import jax.numpy as jnp

from llm_jax.models.mask import Mask

Array = jax.Array
MASKED = float(jnp.finfo(jnp.float32).min)  # as the plain path: fully masked rows stay finite (uniform)
# The name the kernel's operations carry in the compiled program: `llm-jax plan` uses this implementation as the
# stand-in for a fused kernel (splash, cuDNN) whose blocks stay in on-chip memory, and leaves their traffic out.
KERNEL_SCOPE = "attention_kernel"


def _pad(x: Array | None, axis: int, to: int, value=0) -> Array | None:
    if x is None or x.shape[axis] == to:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, to - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _blocks(x: Array | None, axis: int, size: int) -> Array | None:
    """Split `axis` into [n, size] and move n to the front."""
    if x is None:
        return None
    n = x.shape[axis] // size
    x = x.reshape(*x.shape[:axis], n, size, *x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _prepare(mask: Mask, L: int, S: int, bq: int, bk: int):
    """The mask's arrays padded to whole blocks and cut into them: (q parts [nq, ...], kv parts [nk, ...])."""
    Lp, Sp = -(-L // bq) * bq, -(-S // bk) * bk
    q_index = mask.q_index_BL
    q_parts = (_blocks(_pad(q_index, 1, Lp), 1, bq), _blocks(_pad(mask.q_segment_ids_BL, 1, Lp, -1), 1, bq))
    kv_index_S = jnp.arange(Sp)
    # Key padding is never visible: its segment id matches no query's, and it is excluded by index below.
    kv_parts = (kv_index_S.reshape(-1, bk), _blocks(_pad(mask.kv_segment_ids_BS, 1, Sp, -2), 1, bk),
                _blocks(_pad(mask.prefix_BS, 1, Sp), 1, bk))
    return q_parts, kv_parts


def _scores(q_BqGRK, k_BkGK, bias_BGRqk, visible_Bqk, kv_index_k, S: int, scale: float) -> Array:
    s_BGRqk = jnp.einsum("BqGRK,BkGK->BGRqk", q_BqGRK, k_BkGK, preferred_element_type=jnp.float32) * scale
    if bias_BGRqk is not None:
        s_BGRqk = s_BGRqk + bias_BGRqk.astype(jnp.float32)
    s_BGRqk = jnp.where(visible_Bqk[:, None, None], s_BGRqk, MASKED)
    return jnp.where(kv_index_k < S, s_BGRqk, -jnp.inf)  # block padding: no weight at all


def _unless_skipped(mask: Mask, i, j, bq: int, bk: int, skipped, update):
    """update(), or skipped() for a packed causal block entirely above the diagonal (its first key after its last
    query). A prefix LM's prefix keys may lie after the query, so its blocks are all computed."""
    if not mask.causal_by_index or mask.prefix_BS is not None:
        return update()
    return jax.lax.cond(j * bk > i * bq + bq - 1, skipped, update)


def _tied(q_n: Array, indices):
    """The block indices and mask parts made to depend on the queries. They are the same in every layer, and in a
    scanned layer stack JAX's differentiation of the scan hoists what depends only on loop constants out of the
    loop: every block's visibility (and the zeros of its masked scores) for all blocks at once, an
    [nq, nk, ..., bq, bk] array, the L x S memory this kernel exists to avoid."""
    return jax.lax.optimization_barrier((q_n, indices))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attention(q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask: Mask, scale, bq, bk, L_S):
    return _forward(q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, scale, bq, bk, L_S)[0]


@jax.named_scope(KERNEL_SCOPE)
def _forward(q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, scale, bq, bk, L_S):
    L, S = L_S
    B, Lp, G, R, K = q_BLGRK.shape
    q_n, k_n, v_n = _blocks(q_BLGRK, 1, bq), _blocks(k_BSGK, 1, bk), _blocks(v_BSGK, 1, bk)
    nq, nk = q_n.shape[0], k_n.shape[0]
    q_n, (q_steps, kv_steps, (qi_n, qseg_n), (kvi_n, kvseg_n, prefix_n)) = _tied(
        q_n, (jnp.arange(nq), jnp.arange(nk), *_prepare(mask, L, S, bq, bk)))
    bias_nm = None if bias_BGRLS is None else _blocks(_blocks(bias_BGRLS, 4, bk), 4, bq)  # [nq, nk, ...]

    def one_q_block(args):
        i, q_BqGRK, qi_Bq, qseg_Bq, bias_m = args

        def step(carry, kv):
            m_BGRq, l_BGRq, acc_BGRqK = carry
            j, k_BkGK, v_BkGK, kvi_k, kvseg_Bk, prefix_Bk, bias_BGRqk = kv

            def update():
                visible = mask.block(qi_Bq, qseg_Bq, kvi_k, kvseg_Bk, prefix_Bk)
                s_BGRqk = _scores(q_BqGRK, k_BkGK, bias_BGRqk, visible, kvi_k, S, scale)
                m_new = jnp.maximum(m_BGRq, s_BGRqk.max(-1))
                p_BGRqk = jnp.exp(s_BGRqk - m_new[..., None])
                rescale = jnp.exp(m_BGRq - m_new)
                pv_BGRqK = jnp.einsum("BGRqk,BkGK->BGRqK", p_BGRqk.astype(v_BkGK.dtype), v_BkGK,
                                      preferred_element_type=jnp.float32)
                return m_new, l_BGRq * rescale + p_BGRqk.sum(-1), acc_BGRqK * rescale[..., None] + pv_BGRqK

            return _unless_skipped(mask, i, j, bq, bk, lambda: carry, update), None

        init = (jnp.full((B, G, R, bq), MASKED, jnp.float32), jnp.zeros((B, G, R, bq), jnp.float32),
                jnp.zeros((B, G, R, bq, K), jnp.float32))
        (m, norm, acc), _ = jax.lax.scan(step, init, (kv_steps, k_n, v_n, kvi_n, kvseg_n, prefix_n, bias_m))
        # The log-normaliser in two parts: m + log(norm) would round away log(norm) in a fully masked row, whose
        # maximum is the huge MASKED value.
        return acc / norm[..., None], (m, jnp.log(norm))

    out_nBGRqK, lse_n = jax.lax.map(one_q_block, (q_steps, q_n, qi_n, qseg_n, bias_nm))
    out_BLGRK = jnp.moveaxis(out_nBGRqK, 0, 3).reshape(B, G, R, Lp, K).transpose(0, 3, 1, 2, 4)
    out_BLGRK = out_BLGRK.astype(v_BSGK.dtype)
    return out_BLGRK, (q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, out_BLGRK, lse_n)


def _forward_vjp(q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, scale, bq, bk, L_S):
    return _forward(q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, scale, bq, bk, L_S)


@jax.named_scope(KERNEL_SCOPE)
def _backward(scale, bq, bk, L_S, saved, dout_BLGRK):
    L, S = L_S
    q_BLGRK, k_BSGK, v_BSGK, bias_BGRLS, mask, out_BLGRK, lse_n = saved
    B, _, G, R, K = q_BLGRK.shape
    q_n, k_n, v_n = _blocks(q_BLGRK, 1, bq), _blocks(k_BSGK, 1, bk), _blocks(v_BSGK, 1, bk)
    nq, nk = q_n.shape[0], k_n.shape[0]
    q_n, (q_steps, kv_steps, (qi_n, qseg_n), (kvi_n, kvseg_n, prefix_n)) = _tied(
        q_n, (jnp.arange(nq), jnp.arange(nk), *_prepare(mask, L, S, bq, bk)))
    do_n = _blocks(dout_BLGRK, 1, bq)
    # delta = rowsum(dO * O): the softmax backward's correction term, one number per query and head.
    delta_n = _blocks(jnp.einsum("BLGRK,BLGRK->BGRL", dout_BLGRK.astype(jnp.float32),
                                 out_BLGRK.astype(jnp.float32)), 3, bq)
    bias_mn = None if bias_BGRLS is None else jnp.swapaxes(_blocks(_blocks(bias_BGRLS, 4, bk), 4, bq), 0, 1)

    def one_kv_block(dq_n, kv):
        j, k_BkGK, v_BkGK, kvi_k, kvseg_Bk, prefix_Bk, bias_n = kv

        def step(carry, qb):
            dk_BkGK, dv_BkGK = carry
            i, q_BqGRK, do_BqGRK, (m_BGRq, log_norm_BGRq), delta_BGRq, qi_Bq, qseg_Bq, bias_BGRqk = qb
            zero_dq = jnp.zeros((B, bq, G, R, K), jnp.float32)
            zero_db = None if bias_BGRqk is None else jnp.zeros(bias_BGRqk.shape, jnp.float32)

            def update():
                visible = mask.block(qi_Bq, qseg_Bq, kvi_k, kvseg_Bk, prefix_Bk)
                s_BGRqk = _scores(q_BqGRK, k_BkGK, bias_BGRqk, visible, kvi_k, S, scale)
                p_BGRqk = jnp.exp((s_BGRqk - m_BGRq[..., None]) - log_norm_BGRq[..., None])
                dv = jnp.einsum("BGRqk,BqGRK->BkGK", p_BGRqk, do_BqGRK, preferred_element_type=jnp.float32)
                dp_BGRqk = jnp.einsum("BqGRK,BkGK->BGRqk", do_BqGRK, v_BkGK, preferred_element_type=jnp.float32)
                # Masked scores are constants of the forward pass: no gradient flows into them (this matters in
                # fully masked rows, whose probabilities are uniform rather than zero).
                ds_BGRqk = jnp.where(visible[:, None, None], p_BGRqk * (dp_BGRqk - delta_BGRq[..., None]), 0.0)
                dq = jnp.einsum("BGRqk,BkGK->BqGRK", ds_BGRqk, k_BkGK, preferred_element_type=jnp.float32)
                dk = jnp.einsum("BGRqk,BqGRK->BkGK", ds_BGRqk, q_BqGRK, preferred_element_type=jnp.float32)
                db = None
                if bias_BGRqk is not None:
                    db = ds_BGRqk.sum(0, keepdims=True) if bias_BGRqk.shape[0] == 1 else ds_BGRqk
                return (dk_BkGK + dk * scale, dv_BkGK + dv), (dq * scale, db)

            return _unless_skipped(mask, i, j, bq, bk, lambda: (carry, (zero_dq, zero_db)), update)

        init = (jnp.zeros((B, bk, G, K), jnp.float32), jnp.zeros((B, bk, G, K), jnp.float32))
        (dk, dv), (dq_part_n, db_n) = jax.lax.scan(
            step, init, (q_steps, q_n, do_n, lse_n, delta_n, qi_n, qseg_n, bias_n))
        return dq_n + dq_part_n, (dk, dv, db_n)

    dq0 = jnp.zeros((nq, B, bq, G, R, K), jnp.float32)
    dq_n, (dk_n, dv_n, db_mn) = jax.lax.scan(one_kv_block, dq0,
                                             (kv_steps, k_n, v_n, kvi_n, kvseg_n, prefix_n, bias_mn))
    dq = jnp.moveaxis(dq_n, 0, 1).reshape(q_BLGRK.shape).astype(q_BLGRK.dtype)
    dk = jnp.moveaxis(dk_n, 0, 1).reshape(k_BSGK.shape).astype(k_BSGK.dtype)
    dv = jnp.moveaxis(dv_n, 0, 1).reshape(v_BSGK.shape).astype(v_BSGK.dtype)
    dbias = None
    if bias_BGRLS is not None:  # [nk, nq, B, G, R, bq, bk] -> [B, G, R, Lp, Sp]
        db = jnp.transpose(db_mn, (2, 3, 4, 1, 5, 0, 6))
        dbias = db.reshape(bias_BGRLS.shape).astype(bias_BGRLS.dtype)
    mask_zeros = jax.tree.map(lambda a: None, mask)
    return dq, dk, dv, dbias, mask_zeros


_attention.defvjp(_forward_vjp, _backward)


def chunked_attention(q_BLHK: Array, k_BSGK: Array, v_BSGK: Array, mask: Mask, *, scale: float,
                      bias_BHLS: Array | None = None, block_q: int = 512, block_kv: int = 512) -> Array:
    """out_BLHK = softmax(q k^T * scale + bias, masked) v, computed block by block (see the module docstring).
    Lengths need not divide the block sizes: the tail block is padded and its padding never attended to."""
    B, L, H, K = q_BLHK.shape
    S, G = k_BSGK.shape[1], k_BSGK.shape[2]
    bq, bk = min(block_q, L), min(block_kv, S)
    Lp, Sp = math.ceil(L / bq) * bq, math.ceil(S / bk) * bk
    q_BLGRK = _pad(q_BLHK, 1, Lp).reshape(B, Lp, G, H // G, K)
    bias_BGRLS = None
    if bias_BHLS is not None:
        bias_BGRLS = _pad(_pad(bias_BHLS, 2, Lp), 3, Sp)
        bias_BGRLS = bias_BGRLS.reshape(bias_BGRLS.shape[0], G, H // G, Lp, Sp)
    out_BLGRK = _attention(q_BLGRK, _pad(k_BSGK, 1, Sp), _pad(v_BSGK, 1, Sp), bias_BGRLS, mask, scale, bq, bk,
                           (L, S))
    return out_BLGRK[:, :L].reshape(B, L, H, K)
