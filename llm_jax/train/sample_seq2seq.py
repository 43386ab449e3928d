"""Generation for encoder-decoder models: encode each prompt once, then decode from the tokenizer's decoder start
(<bos>, or T5's <pad>) with a KV cache.

One jit holds it all: the encoder, the first decoder step (which also stores every layer's cross-attention keys
and values of the encoder output, so later steps never touch the encoder output again) and a while_loop of
one-token steps that ends when every row has produced the tokenizer's <eos> or max_new_tokens tokens. Sampling is
sample.py's.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials
from llm_jax.models.encoder_decoder import init_cache
from llm_jax.train.sample import sample_logits

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("model", "max_new"))
def encode_and_decode(model: nn.Module, params, tokens_BL: Array, segment_ids_BL: Array, max_new: int, rng: Array,
                      temperature: Array, top_k: Array, top_p: Array, start_id: Array,
                      eos_id: Array) -> tuple[Array, Array]:
    """tokens_BT (T = max_new) decoded after `start_id` for the right-padded prompts, and the columns filled. Rows
    that are done (`eos_id`) keep decoding (the batch moves together); the caller drops what follows their eos."""
    B, L = tokens_BL.shape
    variables = {"params": params}
    positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    enc_BLD = model.apply(variables, tokens_BL, segment_ids_BL, positions_BL, method="encode")
    decoder_segment_ids_B1 = jnp.ones((B, 1), jnp.int32)

    def step(t: Array, last_B: Array, enc_BLD: Array | None, cache: dict[str, Array]) -> tuple[Array, dict]:
        """Feed the token at position t (start_id at 0); slot t of the cache holds its keys/values."""
        positions_B1 = jnp.full((B, 1), t, jnp.int32)
        logits_B1V, cache = model.apply(variables, last_B[:, None], decoder_segment_ids_B1, positions_B1, enc_BLD,
                                        segment_ids_BL, cache, method="decode")
        return sample_logits(logits_B1V[:, 0], jax.random.fold_in(rng, t), temperature, top_k, top_p), cache

    # The one step given the encoder output: it fills the cross-attention cache that the loop then reads.
    cache = init_cache(model.cfg, B, max_new, L)
    first_B, cache = step(jnp.int32(0), jnp.full((B,), start_id, jnp.int32), enc_BLD, cache)
    tokens_BT = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(first_B)

    def cond(state):
        t, _, _, done_B, _ = state
        return (t < max_new) & ~done_B.all()

    def body(state):
        t, tokens_BT, last_B, done_B, cache = state
        next_B, cache = step(t, last_B, None, cache)
        return t + 1, tokens_BT.at[:, t].set(next_B), next_B, done_B | (next_B == eos_id), cache

    start = (jnp.int32(1), tokens_BT, first_B, first_B == eos_id, cache)
    t, tokens_BT, _, _, _ = jax.lax.while_loop(cond, body, start)
    return tokens_BT, t


def generate_seq2seq(model: nn.Module, params, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     seed: int = 0, specials: Specials = DEFAULT_SPECIALS) -> list[np.ndarray]:
    """The decoder's new ids for each prompt (without the eos that ended it), at most max_new_tokens each; the
    decoder starts from specials.decoder_start and prompts are padded with specials.pad.

    Prompts are token ids as the encoder should read them (the caller adds any <bos>/<eos> markers); they are
    right-padded into one batch (segment id 1, padding 0, so no query reads the padding). Temperature 0 is greedy.
    To sample one prompt n times, pass it n times.
    """
    if not prompts or max_new_tokens <= 0:
        return [np.zeros(0, np.int32) for _ in prompts]
    L = max(1, max(len(p) for p in prompts))
    tokens = np.full((len(prompts), L), specials.pad, np.int32)
    segment_ids = np.zeros((len(prompts), L), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = np.asarray(p, np.int32)
        segment_ids[i, : len(p)] = 1
    sampling = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    new, steps = encode_and_decode(model, params, tokens, segment_ids, max_new_tokens, jax.random.key(seed),
                                   *sampling, jnp.int32(specials.decoder_start), jnp.int32(specials.eos))
    out = []
    for row in np.asarray(new)[:, : int(steps)]:
        eos = np.flatnonzero(row == specials.eos)
        out.append(row[: eos[0]] if len(eos) else row)
    return out
