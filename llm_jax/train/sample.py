"""Plain temperature sampling by recomputing the whole prefix each token (simple; a KV cache comes later).

The token buffer has a fixed length, so one compiled function serves every position.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.data.tokenizer import BOS_ID, EOS_ID


@functools.partial(jax.jit, static_argnames=("model",))
def _next_token(model: nn.Module, params, tokens_BL: jax.Array, index: jax.Array, rng: jax.Array,
                temperature: jax.Array) -> jax.Array:
    B, L = tokens_BL.shape
    positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    logits_BLV = model.apply({"params": params}, tokens_BL, jnp.ones_like(tokens_BL), positions_BL)
    logits_BV = jax.lax.dynamic_index_in_dim(logits_BLV, index, axis=1, keepdims=False).astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    sampled_B = jax.random.categorical(rng, logits_BV / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def generate(model: nn.Module, params, prompt_ids: np.ndarray, max_new_tokens: int, context: int,
             temperature: float, seed: int, num_samples: int = 1) -> list[np.ndarray]:
    """Continue <bos> + prompt; stops at <eos> or when the context is full. Returns the new ids per sample."""
    prompt = np.concatenate([[BOS_ID], np.asarray(prompt_ids, np.int32)])[-context:]
    tokens = np.zeros((num_samples, context), np.int32)
    tokens[:, : len(prompt)] = prompt
    rng = jax.random.key(seed)
    n = len(prompt)
    for _ in range(min(max_new_tokens, context - n)):
        rng, step_rng = jax.random.split(rng)
        nxt = np.asarray(_next_token(model, params, jnp.asarray(tokens), n - 1, step_rng, temperature))
        tokens[:, n] = nxt
        n += 1
        if (nxt == EOS_ID).all():
            break
    out = []
    for row in tokens[:, len(prompt): n]:
        stop = np.flatnonzero(row == EOS_ID)
        out.append(row[: stop[0]] if len(stop) else row)
    return out
