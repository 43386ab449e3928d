"""The pure train and eval steps. Both are module-level and jitted once by the loop.

A batch is a stack of examples (objectives/example.py). The model takes from it what it reads (`model.inputs`),
the objective's loss (a static part of the state) scores its targets by their weights: the step never asks which
family or objective it runs. With train.loss_chunk every family hands over its output head instead of logits and the
same loss runs over chunks of positions (objectives/loss.py `in_chunks`), so [B, L, V] logits never exist whole.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llm_jax.models.head import OutputHead
from llm_jax.objectives.loss import eval_sums, in_chunks
from llm_jax.train.guard import decide, keep_if
from llm_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def forward(model: nn.Module, params, batch: Batch) -> jax.Array:
    """The model's logits for a batch of examples."""
    return model.apply({"params": params}, **model.inputs(batch))


def forward_head(model: nn.Module, params, batch: Batch) -> OutputHead:
    """What the model's logits for a batch are made from (models/head.py), for a loss taken in chunks."""
    return model.apply({"params": params}, **model.inputs(batch), head_only=True)


def _micro_loss(params, state: TrainState, micro: Batch, total_tokens: jax.Array):
    o = state.options
    if o.loss_chunk:  # static: a training setting, the same for every family and objective
        ce_sum, z_sum = in_chunks(forward_head(state.model, params, micro), micro, o.loss_chunk,
                                  lambda logits, example: o.loss(logits, example, o.z_loss))
    else:
        ce_sum, z_sum = o.loss(forward(state.model, params, micro), micro, o.z_loss)
    # Dividing every micro-batch by the whole batch's token count makes the summed gradients exactly the
    # gradient of the token-weighted mean loss, whatever the split.
    return (ce_sum + z_sum) / total_tokens, (ce_sum, z_sum)


def _micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B/n, ...]. Row r goes to micro-batch r % n, so each micro-batch spans every device."""
    return {k: jnp.swapaxes(v.reshape(v.shape[0] // n, n, *v.shape[1:]), 0, 1) for k, v in batch.items()}


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    total_tokens = jnp.maximum(batch["weights"].sum(), 1).astype(jnp.float32)
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


def eval_step(model: nn.Module, params, batch: Batch, token_bytes_V: jax.Array,
              loss_chunk: int = 0) -> dict[str, jax.Array]:
    """Summed loss, target tokens, the UTF-8 bytes they stand for and the targets predicted right, so that several
    batches combine into an exact mean loss per token, bits per byte and accuracy. `loss_chunk` (static): as in
    training, logits made that many positions at a time (an evaluation batch is the whole global batch)."""
    if loss_chunk:
        return in_chunks(forward_head(model, params, batch), batch, loss_chunk,
                         lambda logits, example: eval_sums(logits, example, token_bytes_V))
    return eval_sums(forward(model, params, batch), batch, token_bytes_V)
