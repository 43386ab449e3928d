"""Which keys each query may see, described by structure rather than as an [B, L, S] array.

The masks of every family are built from three facts: the packed document each token belongs to (segment ids),
whether a query sees only earlier keys (causal, by index), and which keys a prefix LM shows to its whole document.
Keeping them as such lets a blockwise implementation build each block's mask on the fly and lets a fused kernel
take segment ids natively; only the plain implementation materialises the dense mask.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.tree_util.register_dataclass, meta_fields=["causal_by_index"],
                   data_fields=["q_segment_ids_BL", "kv_segment_ids_BS", "q_index_BL", "prefix_BS"])
@dataclasses.dataclass(frozen=True)
class Mask:
    """A query sees key s when (causal: s <= its index, or s is in its document's prefix) and it is in the same
    document as s. Each field may be None: no segment ids (every key is in the same document), not causal (every
    key is visible), no prefix. Batch axes may be 1 (broadcast)."""

    q_segment_ids_BL: Array | None = None
    kv_segment_ids_BS: Array | None = None
    q_index_BL: Array | None = None  # causal: the highest key index each query sees
    prefix_BS: Array | None = None  # keys every query of their document sees (prefix LM)
    # True when q_index is 0..L-1 (packed self-attention, the same for every row): the causal shape is static,
    # which fused kernels need, and blocks above the diagonal can be skipped.
    causal_by_index: bool = False

    @property
    def segmented(self) -> bool:
        return self.q_segment_ids_BL is not None

    def block(self, q_index_BL: Array | None, q_segment_ids_BL: Array | None, kv_index_S: Array,
              kv_segment_ids_BS: Array | None, prefix_BS: Array | None) -> Array:
        """[B|1, L, S] True where visible, for one block given its slices of this mask's arrays (the same fields,
        cut to the block) and the block's key indices."""
        visible = jnp.ones((1, 1, kv_index_S.shape[0]), bool)
        if q_index_BL is not None:
            visible = kv_index_S[None, None, :] <= q_index_BL[:, :, None]
            if prefix_BS is not None:
                visible = visible | prefix_BS.astype(bool)[:, None, :]
        if q_segment_ids_BL is not None:
            visible = visible & (q_segment_ids_BL[:, :, None] == kv_segment_ids_BS[:, None, :])
        return visible

    def dense(self, L: int, S: int) -> Array:
        """The whole [B|1, L, S] boolean mask."""
        q_index_BL = self.q_index_BL
        if q_index_BL is None and self.q_segment_ids_BL is None:
            return jnp.ones((1, L, S), bool)
        return self.block(q_index_BL, self.q_segment_ids_BL, jnp.arange(S), self.kv_segment_ids_BS,
                          self.prefix_BS)


def causal_mask(segment_ids_BL: Array, prefix_BL: Array | None = None) -> Mask:
    """Packed causal self-attention: earlier keys of the same document (and, with `prefix_BL`, the document's
    prefix both ways)."""
    L = segment_ids_BL.shape[1]
    return Mask(segment_ids_BL, segment_ids_BL, jnp.arange(L)[None], prefix_BL, causal_by_index=True)


def document_mask(q_segment_ids_BL: Array, kv_segment_ids_BS: Array) -> Mask:
    """Bidirectional attention inside each packed document (encoders, cross-attention). Padding (segment 0) sees
    only padding: its rows stay finite and its outputs are never read."""
    return Mask(q_segment_ids_BL, kv_segment_ids_BS)


def slots_mask(positions_BL: Array) -> Mask:
    """A KV cache whose row holds one document at slots = positions: a query sees every slot up to its own
    position (the prompt and the tokens decoded so far), never right padding or stale slots past it."""
    return Mask(q_index_BL=positions_BL)
