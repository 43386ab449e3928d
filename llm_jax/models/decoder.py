"""The decoder-only transformer: a pure function (params, tokens, segment_ids, positions) -> logits.

For generation the same function also takes a KV cache, {"k": k_NBSGK, "v": v_NBSGK} (N layers, S slots), and
returns (logits, new cache); see `init_cache`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.layers import Attention, Mlp, Norm, constrain, dense, weight

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    # Keep the weight matmuls' outputs, recompute the rest (attention, norms, activations).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def init_cache(model_cfg: FrozenConfigDict, batch: int, length: int) -> dict[str, Array]:
    """An empty KV cache for `batch` rows of up to `length` tokens, in the compute dtype."""
    c = model_cfg
    shape = (c.num_layers, batch, length, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(shape, c.dtype), "v": jnp.zeros(shape, c.dtype)}


class Block(nn.Module):
    """Pre-norm residual block. Returns (x, this layer's new cache or None) so it works under nn.scan."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, segment_ids_BL: Array, positions_BL: Array,
                 cache: tuple[Array, Array] | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        h_BLD = Norm(self.cfg, name="attn_norm")(x_BLD)
        if cache is None:
            x_BLD = x_BLD + Attention(self.cfg, name="attn")(h_BLD, segment_ids_BL, positions_BL)
        else:
            attn_BLD, cache = Attention(self.cfg, name="attn")(h_BLD, segment_ids_BL, positions_BL, cache)
            x_BLD = x_BLD + attn_BLD
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))
        h_BLD = Norm(self.cfg, name="mlp_norm")(x_BLD)
        x_BLD = x_BLD + Mlp(self.cfg, name="mlp")(h_BLD)
        return constrain(x_BLD, ("batch", "length", "embed")), cache


class Transformer(nn.Module):
    """`cfg` is the (finalized, frozen) `config.model` section.

    Without a cache: logits_BLV for packed rows (causal, segment_ids keep documents apart). With a cache: each row
    is one document; this call's keys/values are written at slots `positions_BL` and every query attends to the
    slots up to its position. Returns (logits_BLV, new cache); used for prefill (L = prompt) and decode (L = 1).
    """

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, tokens_BL: Array, segment_ids_BL: Array, positions_BL: Array,
                 cache: dict[str, Array] | None = None) -> Array | tuple[Array, dict[str, Array]]:
        c = self.cfg
        V, D = c.vocab_size, c.d_model
        embed_VD = weight(self, "embedding", (V, D), ("vocab", "embed"), c)
        x_BLD = jnp.take(embed_VD, tokens_BL, axis=0)
        if c.positions == "learned":
            pos_PD = weight(self, "pos_embedding", (c.max_seq_len, D), (None, "embed"), c)
            x_BLD = x_BLD + jnp.take(pos_PD, positions_BL, axis=0)
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))

        block = Block
        if c.remat != "none":
            # Under scan, the loop boundary already stops XLA from merging the recomputation away.
            block = nn.remat(Block, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        # Each layer gets its (k, v) slice of the cache and hands back the updated one.
        layer_caches = () if cache is None else ((cache["k"], cache["v"]),)
        if c.scan_layers:
            # One compiled block applied num_layers times: compile time does not grow with depth.
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast, *(0,) * len(layer_caches)), length=c.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BLD, new_cache = stack(c, name="layers")(x_BLD, segment_ids_BL, positions_BL, *layer_caches)
        else:
            new = []
            for i in range(c.num_layers):
                layer_cache = [jax.tree.map(lambda a, i=i: a[i], lc) for lc in layer_caches]
                x_BLD, layer_new = block(c, name=f"layer_{i}")(x_BLD, segment_ids_BL, positions_BL, *layer_cache)
                new.append(layer_new)
            new_cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new)

        x_BLD = Norm(c, name="final_norm")(x_BLD)
        if c.tie_embeddings:
            logits_BLV = dense(x_BLD, embed_VD.T)
        else:
            unembed_DV = weight(self, "unembed", (D, V), ("embed", "vocab"), c)
            logits_BLV = dense(x_BLD, unembed_DV)
        logits_BLV = constrain(logits_BLV, ("batch", "length", "vocab"))
        if cache is None:
            return logits_BLV
        k_NBSGK, v_NBSGK = new_cache
        return logits_BLV, {"k": k_NBSGK, "v": v_NBSGK}


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Scanned params ('layers' with a leading layer axis) -> unrolled ones ('layer_0', 'layer_1', ...)."""
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(num_layers):
        params[f"layer_{i}"] = jax.tree.map(lambda w, i=i: w[i], stacked)
    return params
