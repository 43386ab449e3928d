"""The pure train and eval steps. Both are module-level and jitted once by the loop.

A batch holds rows of seq_len + 1 tokens: the model reads tokens[:, :-1] and predicts tokens[:, 1:]. A target
counts only if it belongs to the same document as the token before it and is not padding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llm_jax.train.guard import decide, keep_if
from llm_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def split_batch(batch: Batch) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
    """(model inputs), targets_BL, target mask_BL."""
    tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
    mask_BL = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    return (tokens[:, :-1], seg[:, :-1], pos[:, :-1]), tokens[:, 1:], mask_BL


def cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array, mask_BL: jax.Array,
                  z_loss: float) -> tuple[jax.Array, jax.Array]:
    """Summed (not averaged) masked cross-entropy and z-loss, in float32."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    ce_sum = jnp.sum((log_z_BL - target_logit_BL) * mask_BL)
    z_sum = jnp.sum(jnp.square(log_z_BL) * mask_BL)
    return ce_sum, z_loss * z_sum


def _micro_loss(params, state: TrainState, micro: Batch, total_tokens: jax.Array):
    inputs, targets_BL, mask_BL = split_batch(micro)
    logits_BLV = state.model.apply({"params": params}, *inputs)
    ce_sum, z_sum = cross_entropy(logits_BLV, targets_BL, mask_BL, state.options.z_loss)
    # Dividing every micro-batch by the whole batch's token count makes the summed gradients exactly the
    # gradient of the token-weighted mean loss, whatever the split.
    return (ce_sum + z_sum) / total_tokens, (ce_sum, z_sum)


def _micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B/n, ...]. Row r goes to micro-batch r % n, so each micro-batch spans every device."""
    return {k: jnp.swapaxes(v.reshape(v.shape[0] // n, n, *v.shape[1:]), 0, 1) for k, v in batch.items()}


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    _, _, mask_BL = split_batch(batch)
    total_tokens = jnp.maximum(mask_BL.sum(), 1).astype(jnp.float32)
    grad_fn = jax.grad(_micro_loss, has_aux=True)

    def accumulate(carry, micro):
        grads, ce, z = carry
        g, (ce_sum, z_sum) = grad_fn(state.params, state, micro, total_tokens)
        return (jax.tree.map(jnp.add, grads, g), ce + ce_sum, z + z_sum), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, ce_sum, z_sum), _ = jax.lax.scan(accumulate, init, _micro_batches(batch, state.options.grad_accum))

    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss, grad_norm, guard = ce_sum / total_tokens, optax.tree.norm(grads), state.guard
    if state.options.guard.active:  # static: without a guard the step has no extra select
        skip, guard = decide(guard, loss, grad_norm, state.options.guard)
        params, opt_state = keep_if(skip, (state.params, state.opt_state), (params, opt_state))
    metrics = {
        "loss": loss,
        "z_loss": z_sum / total_tokens,
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "update_norm": optax.tree.norm(updates),
        "tokens": total_tokens,
    }
    if state.options.schedule is not None:
        metrics["lr"] = jnp.asarray(state.options.schedule(state.step), jnp.float32)
    if state.options.guard.active:
        metrics.update(skipped=guard["skipped"].astype(jnp.float32), skip_streak=guard["streak"].astype(jnp.float32))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, guard=guard), metrics


def eval_step(model: nn.Module, params, batch: Batch, token_bytes_V: jax.Array) -> dict[str, jax.Array]:
    """Summed loss, target tokens and the UTF-8 bytes they stand for, so that several batches combine into an exact
    mean loss per token and bits per byte."""
    inputs, targets_BL, mask_BL = split_batch(batch)
    logits_BLV = model.apply({"params": params}, *inputs)
    ce_sum, _ = cross_entropy(logits_BLV, targets_BL, mask_BL, 0.0)
    return {"loss_sum": ce_sum, "tokens": mask_BL.sum().astype(jnp.float32),
            "bytes": jnp.sum(jnp.take(token_bytes_V, targets_BL) * mask_BL).astype(jnp.float32)}
