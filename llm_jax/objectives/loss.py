"""The loss every objective uses: weighted cross-entropy over an example's targets, and the sums evaluation adds.

Sums (not means) so that micro-batches and evaluation batches combine exactly into a mean per target token.
"""

import jax
import jax.numpy as jnp

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
