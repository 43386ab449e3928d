"""Generation with a KV cache: one jitted prefill over the right-padded prompts, then one jitted decode loop.

Each row continues from its own prompt length. A row stops at <eos> or when it reaches `context` tokens; the loop
stops when every row has. Sampling scales by the temperature (0 = greedy), then keeps the top-k logits, then the
top-p nucleus. Sampling settings are traced values, so changing them does not recompile.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.data.tokenizer import DEFAULT_SPECIALS, EOS_ID, Specials
from llm_jax.models.decoder import init_cache

Array = jax.Array


def sample_logits(logits_BV: Array, rng: Array, temperature: Array | float, top_k: Array | int,
                  top_p: Array | float) -> Array:
    """One token per row: argmax if temperature <= 0, else a draw from the top-k / top-p filtered softmax."""
    logits_BV = logits_BV.astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    sorted_BV = -jnp.sort(-scaled_BV, axis=-1)  # best first
    rank_1V = jnp.arange(logits_BV.shape[-1])[None]
    in_top_k_BV = (top_k <= 0) | (rank_1V < top_k)
    sorted_BV = jnp.where(in_top_k_BV, sorted_BV, -jnp.inf)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # The best token always stays (no mass before it); top_p >= 1 keeps all, whatever the cumsum's rounding.
    keep_BV = in_top_k_BV & ((mass_before_BV < top_p) | (top_p >= 1))
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    sampled_B = jax.random.categorical(rng, jnp.where(scaled_BV >= threshold_B1, scaled_BV, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "cache_len"))
def prefill(model: nn.Module, params, tokens_BP: Array, lengths_B: Array, cache_len: int, rng: Array,
            temperature: Array, top_k: Array, top_p: Array) -> tuple[Array, dict[str, Array]]:
    """Run the right-padded prompts through the model into a fresh cache; sample each row's first new token."""
    B, P = tokens_BP.shape
    positions_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    cache = init_cache(model.cfg, B, cache_len)
    logits_BPV, cache = model.apply({"params": params}, tokens_BP, jnp.ones_like(tokens_BP), positions_BP, cache)
    last_BV = jnp.take_along_axis(logits_BPV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return sample_logits(last_BV, jax.random.fold_in(rng, 0), temperature, top_k, top_p), cache


@functools.partial(jax.jit, static_argnames=("model", "max_new"), donate_argnames=("cache",))
def decode(model: nn.Module, params, cache: dict[str, Array], first_B: Array, lengths_B: Array, limits_B: Array,
           max_new: int, rng: Array, temperature: Array, top_k: Array, top_p: Array,
           eos_id: Array | int = EOS_ID) -> tuple[Array, Array, dict[str, Array]]:
    """Feed one token per row per step until every row has hit <eos> or its limit (or max_new steps).

    Returns tokens_BT (T = max_new; column 0 is `first_B`, the prefill's token), the number of columns filled, and
    the cache (returned so that it is updated in the donated input's buffer rather than in a copy). Rows that are
    done keep decoding (the batch moves together); the caller drops what follows.
    """
    B, S = first_B.shape[0], cache["k"].shape[2]
    tokens_BT = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(first_B)
    done_B = (first_B == eos_id) | (limits_B <= 1)

    def cond(state):
        t, _, _, done_B, _ = state
        return (t < max_new) & ~done_B.all()

    def body(state):
        t, tokens_BT, last_B, done_B, cache = state
        # The token fed now is new token t - 1 of its row; done rows may run past the cache, so clamp.
        positions_B1 = jnp.minimum(lengths_B + t - 1, S - 1)[:, None]
        logits_B1V, cache = model.apply({"params": params}, last_B[:, None], jnp.ones_like(positions_B1),
                                        positions_B1, cache)
        next_B = sample_logits(logits_B1V[:, 0], jax.random.fold_in(rng, t), temperature, top_k, top_p)
        tokens_BT = tokens_BT.at[:, t].set(next_B)
        done_B = done_B | (next_B == eos_id) | (t + 1 >= limits_B)
        return t + 1, tokens_BT, next_B, done_B, cache

    t, tokens_BT, _, _, cache = jax.lax.while_loop(cond, body, (jnp.int32(1), tokens_BT, first_B, done_B, cache))
    return tokens_BT, t, cache


def generate(model: nn.Module, params, prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int, *,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             specials: Specials = DEFAULT_SPECIALS) -> list[np.ndarray]:
    """Continue <bos> + each prompt; returns the new ids per prompt (without the <eos> that ended it).

    A row holds at most `context` tokens: an over-long prompt keeps its last tokens, leaving room for
    `max_new_tokens` new ones (but keeping at least half the context), and a row gets at most context - its
    prompt length new tokens. `params` may be sharded over a mesh (the shardings carry over;
    inside `jax.set_mesh` and `nn.logical_axis_rules` the model's layout constraints apply too). To sample one
    prompt n times, pass it n times.
    """
    if context > model.cfg.max_seq_len:
        raise ValueError(f"context={context} is above the model's position limit model.max_seq_len="
                         f"{model.cfg.max_seq_len}; pass a shorter context")
    keep = max(context - max_new_tokens, (context + 1) // 2)
    rows = [np.concatenate([[specials.bos], np.asarray(p, np.int32)])[-keep:].astype(np.int32) for p in prompts]
    lengths = np.array([len(r) for r in rows], np.int32)
    limits = np.clip(context - lengths, 0, max(max_new_tokens, 0)).astype(np.int32)
    max_new = int(limits.max(initial=0))
    if max_new == 0:
        return [np.zeros(0, np.int32) for _ in rows]
    tokens = np.full((len(rows), int(lengths.max())), specials.pad, np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    rng = jax.random.key(seed)
    sampling = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    first, cache = prefill(model, params, tokens, lengths, context, rng, *sampling)
    new, steps, _ = decode(model, params, cache, first, lengths, limits, max_new, rng, *sampling,
                           jnp.int32(specials.eos))
    new, steps = np.asarray(new), int(steps)
    out = []
    for row, limit in zip(new, limits, strict=True):
        row = row[: min(limit, steps)]
        eos = np.flatnonzero(row == specials.eos)
        out.append(row[: eos[0]] if len(eos) else row)
    return out
