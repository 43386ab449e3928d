"""The loss every objective uses: weighted cross-entropy over an example's targets, and the sums evaluation adds.

Sums (not means) so that micro-batches and evaluation batches combine exactly into a mean per target token, and,
with train.loss_chunk, chunks of positions too: `in_chunks` runs such a sum over the model's OutputHead a slice of
positions at a time.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from llm_jax.models.head import OutputHead, chunk_logits
from llm_jax.models.layout import constrain
from llm_jax.objectives.example import Example


def cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array,
                  z_loss: float) -> tuple[jax.Array, jax.Array]:
    """Summed weighted cross-entropy and z-loss (weight x log(Z)^2), in float32."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    ce_sum = jnp.sum((log_z_BL - target_logit_BL) * weights_BL)
    z_sum = jnp.sum(jnp.square(log_z_BL) * weights_BL)
    return ce_sum, z_loss * z_sum


def example_loss(logits_BLV: jax.Array, example: Example, z_loss: float) -> tuple[jax.Array, jax.Array]:
    return cross_entropy(logits_BLV, example["targets"], example["weights"], z_loss)


def eval_sums(logits_BLV: jax.Array, example: Example, token_bytes_V: jax.Array) -> dict[str, jax.Array]:
    """Loss, weight (target tokens), the UTF-8 bytes the targets stand for, and the targets predicted right (the
    most likely token): summed, so that batches add up to loss per token, bits per byte and accuracy."""
    targets_BL, weights_BL = example["targets"], example["weights"]
    ce_sum, _ = cross_entropy(logits_BLV, targets_BL, weights_BL, 0.0)
    hit_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    return {"loss_sum": ce_sum, "tokens": weights_BL.sum().astype(jnp.float32),
            "bytes": jnp.sum(jnp.take(token_bytes_V, targets_BL) * weights_BL).astype(jnp.float32),
            "correct": jnp.sum(hit_BL * weights_BL)}


def in_chunks(head: OutputHead, example: Example, chunk: int,
              sums: Callable[[jax.Array, Example], Any]) -> Any:
    """`sums(logits_BTV, chunk_example)` added up over slices of `chunk` positions, as if it ran on logits_BLV.

    `sums` must be a sum over positions that reads the example's targets and weights only (the chunk example holds
    nothing else). Chunks cut the length, not the batch, so every chunk spans all the devices the batch is sharded
    over; a length that `chunk` does not divide is padded with weight-0 positions. Each chunk's float32 logits are
    made under jax.checkpoint, so the backward pass remakes them instead of keeping [B, L, V] for it.
    """
    x_BLD, targets_BL, weights_BL = head.x_BLD, example["targets"], example["weights"]
    B, L, D = x_BLD.shape
    T = min(chunk, L)
    n, pad = -(-L // T), -L % T
    if pad:
        x_BLD = jnp.pad(x_BLD, ((0, 0), (0, pad), (0, 0)))
        targets_BL, weights_BL = (jnp.pad(a, ((0, 0), (0, pad))) for a in (targets_BL, weights_BL))
    x_NBTD = jnp.moveaxis(x_BLD.reshape(B, n, T, D), 1, 0)
    targets_NBT, weights_NBT = (jnp.moveaxis(a.reshape(B, n, T), 1, 0) for a in (targets_BL, weights_BL))

    @jax.checkpoint
    def one(w_DV, b_V, x_BTD, targets_BT, weights_BT):
        return sums(chunk_logits(x_BTD, w_DV, b_V), {"targets": targets_BT, "weights": weights_BT})

    # Gathered over FSDP once, outside the loop: left sharded, the partitioner gathers it again in every chunk,
    # forward and backward (for llama3_8b at 8192 tokens in chunks of 1024, 15 GiB more per device per step).
    w_DV = constrain(head.w_DV, (None, "vocab"))

    def add(total, xs):
        return jax.tree.map(jnp.add, total, one(w_DV, head.b_V, *xs)), None

    first = jax.eval_shape(one, w_DV, head.b_V, x_NBTD[0], targets_NBT[0], weights_NBT[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
    total, _ = jax.lax.scan(add, zeros, (x_NBTD, targets_NBT, weights_NBT))
    return total
