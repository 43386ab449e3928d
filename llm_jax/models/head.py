"""The output head as data: what a model's logits are made from, so that a loss can make them a chunk at a time.

Called with `head_only=True`, every family returns an `OutputHead` instead of logits_BLV: the features after all
that is done per token (final norm, BERT's MLM transform, T5's rescaling of a tied head) and the projection with
its bias. `logits()` is exactly what the model returns otherwise; `chunk_logits` is the same product for a slice of
positions, kept in float32, which is how train.loss_chunk never holds [B, L, V] at once.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from llm_jax.models.layers import dense
from llm_jax.models.layout import constrain

Array = jax.Array


class OutputHead(NamedTuple):
    x_BLD: Array  # what the projection reads, in the compute dtype
    w_DV: Array
    b_V: Array | None = None

    def logits(self) -> Array:
        """logits_BLV in the compute dtype: the model's ordinary output."""
        logits_BLV = dense(self.x_BLD, self.w_DV)
        if self.b_V is not None:
            logits_BLV = logits_BLV + self.b_V
        return constrain(logits_BLV, ("batch", "length", "vocab"))


def chunk_logits(x_BTD: Array, w_DV: Array, b_V: Array | None) -> Array:
    """float32 logits_BTV of T positions: accumulated in float32 and left there (no round trip through a bf16
    compute dtype, which the whole-logits path takes before its float32 loss)."""
    B, T, D = x_BTD.shape
    x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
    # One 2-D matmul over the chunk's tokens, as layers.dense does (see there why).
    logits_NV = jnp.matmul(x_BTD.reshape(B * T, D), w_DV, preferred_element_type=jnp.float32)
    logits_BTV = logits_NV.reshape(B, T, -1)
    if b_V is not None:
        logits_BTV = logits_BTV + b_V.astype(jnp.float32)
    return constrain(logits_BTV, ("batch", "length", "vocab"))
