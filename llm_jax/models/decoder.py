"""The decoder-only transformer (GPT, Llama): a pure function (params, tokens, segment_ids, positions) -> logits.

For generation the same function also takes a KV cache, {"k": k_NBSGK, "v": v_NBSGK} (N layers, S slots), and
returns (logits, new cache); see `init_cache`. With `prefix_BL` (prefix LM) a document's prefix attends both ways.
With `head_only=True` it returns the OutputHead (models/head.py) the logits are made from instead.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.head import OutputHead
from llm_jax.models.layers import Attention, Mlp, Norm, constrain, token_inputs, weight
from llm_jax.models.mask import Mask, causal_mask
from llm_jax.models.stack import run_stack

Array = jax.Array


def init_cache(model_cfg: FrozenConfigDict, batch: int, length: int) -> dict[str, Array]:
    """An empty KV cache for `batch` rows of up to `length` tokens, in the compute dtype."""
    c = model_cfg
    shape = (c.num_layers, batch, length, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(shape, c.dtype), "v": jnp.zeros(shape, c.dtype)}


class Block(nn.Module):
    """Pre-norm residual block. Returns (x, this layer's new cache or None) so it works under nn.scan."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask | None, positions_BL: Array,
                 cache: tuple[Array, Array] | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        h_BLD = Norm(self.cfg, name="attn_norm")(x_BLD)
        attn_BLD, kv = Attention(self.cfg, name="attn")(h_BLD, mask, positions_BL, cache=cache)
        x_BLD = constrain(x_BLD + attn_BLD, ("batch", "length", "embed"))
        h_BLD = Norm(self.cfg, name="mlp_norm")(x_BLD)
        x_BLD = x_BLD + Mlp(self.cfg, name="mlp")(h_BLD)
        return constrain(x_BLD, ("batch", "length", "embed")), None if cache is None else kv


class Decoder(nn.Module):
    """`cfg` is the (finalized, frozen) `config.model` section.

    Without a cache: logits_BLV for packed rows (causal, segment_ids keep documents apart). With a cache: each row
    is one document; this call's keys/values are written at slots `positions_BL` and every query attends to the
    slots up to its position. Returns (logits_BLV, new cache); used for prefill (L = prompt) and decode (L = 1).
    """

    cfg: FrozenConfigDict

    @staticmethod
    def inputs(example: dict) -> dict:
        """The model's arguments from an example (objectives/example.py): a prefix mask if the objective has one."""
        return token_inputs(example, {"prefix": "prefix_BL"})

    @nn.compact
    def __call__(self, tokens_BL: Array, segment_ids_BL: Array, positions_BL: Array,
                 cache: dict[str, Array] | None = None,
                 prefix_BL: Array | None = None,
                 head_only: bool = False) -> Array | OutputHead | tuple[Array, dict[str, Array]]:
        c = self.cfg
        if head_only and cache is not None:
            raise ValueError("head_only=True is for training on packed rows; generation with a cache needs logits")
        V, D = c.vocab_size, c.d_model
        embed_VD = weight(self, "embedding", (V, D), ("vocab", "embed"), c)
        x_BLD = jnp.take(embed_VD, tokens_BL, axis=0)
        if c.positions == "learned":
            pos_PD = weight(self, "pos_embedding", (c.max_seq_len, D), (None, "embed"), c)
            x_BLD = x_BLD + jnp.take(pos_PD, positions_BL, axis=0)
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))

        # The mask is made once for all layers; with a cache, each layer makes it from its slots.
        mask = causal_mask(segment_ids_BL, prefix_BL) if cache is None else None
        layer_caches = () if cache is None else ((cache["k"], cache["v"]),)
        x_BLD, new_cache = run_stack(Block, c, c.num_layers, x_BLD, (mask, positions_BL), layer_caches)

        x_BLD = Norm(c, name="final_norm")(x_BLD)
        unembed_DV = embed_VD.T if c.tie_embeddings else weight(self, "unembed", (D, V), ("embed", "vocab"), c)
        head = OutputHead(x_BLD, unembed_DV)
        if head_only:
            return head
        logits_BLV = head.logits()
        if cache is None:
            return logits_BLV
        k_NBSGK, v_NBSGK = new_cache
        return logits_BLV, {"k": k_NBSGK, "v": v_NBSGK}
