"""T5's relative position bias: a learned (buckets, heads) table indexed by the bucketed key - query distance.

Near distances get a bucket each; farther ones share logarithmically wider buckets up to `max_distance`, past
which everything shares the last one. One table serves every layer of a stack.
"""

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """Bucket of each `relative_position` (key position - query position), as T5 / HF transformers compute it.

    Bidirectional: half the buckets for keys at or before the query, half (offset by num_buckets // 2) for keys
    after it. Causal: keys after the query all land in bucket 0 (they are masked anyway).
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # float32 and truncation, as T5 does: the bucket edges (e.g. distance 16 of 8..128) land on exact integers.
    # The floor of max_exact keeps log() finite where `distance` is small (those entries take the exact branch).
    ratio = jnp.maximum(distance, max_exact).astype(jnp.float32) / max_exact
    log_bucket = max_exact + (jnp.log(ratio) / math.log(max_distance / max_exact)
                              * (num_buckets - max_exact)).astype(jnp.int32)
    log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, log_bucket)


def relative_bias(table_PH: Array, q_positions_BL: Array, k_positions_BS: Array, *, bidirectional: bool,
                  max_distance: int) -> Array:
    """bias_BHLS for queries at `q_positions_BL` and keys at `k_positions_BS` (B may be 1 on either side);
    `table_PH` holds one learned bias per position bucket P and head H.

    Positions restart at 0 in each packed document, so distances inside a document are right; pairs across
    documents get some bias but are masked.
    """
    relative_BLS = k_positions_BS[:, None, :] - q_positions_BL[:, :, None]
    bucket_BLS = relative_position_bucket(relative_BLS, bidirectional, table_PH.shape[0], max_distance)
    bias_BLSH = jnp.take(table_PH, bucket_BLS, axis=0)
    return jnp.transpose(bias_BLSH, (0, 3, 1, 2))
