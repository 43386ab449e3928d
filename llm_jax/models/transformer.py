"""The decoder-only transformer: a pure function (params, tokens, segment_ids, positions) -> logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.layers import Attention, Mlp, Norm, constrain, weight

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    # Keep the weight matmuls' outputs, recompute the rest (attention, norms, activations).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """Pre-norm residual block. Returns (x, None) so the same module works under nn.scan."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, segment_ids_BL: Array, positions_BL: Array) -> tuple[Array, None]:
        h_BLD = Norm(self.cfg, name="attn_norm")(x_BLD)
        x_BLD = x_BLD + Attention(self.cfg, name="attn")(h_BLD, segment_ids_BL, positions_BL)
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))
        h_BLD = Norm(self.cfg, name="mlp_norm")(x_BLD)
        x_BLD = x_BLD + Mlp(self.cfg, name="mlp")(h_BLD)
        return constrain(x_BLD, ("batch", "length", "embed")), None


class Transformer(nn.Module):
    """`cfg` is the (finalized, frozen) `config.model` section."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, tokens_BL: Array, segment_ids_BL: Array, positions_BL: Array) -> Array:
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
        if c.scan_layers:
            # One compiled block applied num_layers times: compile time does not grow with depth.
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BLD, _ = stack(c, name="layers")(x_BLD, segment_ids_BL, positions_BL)
        else:
            for i in range(c.num_layers):
                x_BLD, _ = block(c, name=f"layer_{i}")(x_BLD, segment_ids_BL, positions_BL)

        x_BLD = Norm(c, name="final_norm")(x_BLD)
        if c.tie_embeddings:
            logits_BLV = jnp.einsum("BLD,VD->BLV", x_BLD, embed_VD)
        else:
            unembed_DV = weight(self, "unembed", (D, V), ("embed", "vocab"), c)
            logits_BLV = jnp.einsum("BLD,DV->BLV", x_BLD, unembed_DV)
        return constrain(logits_BLV, ("batch", "length", "vocab"))


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Scanned params ('layers' with a leading layer axis) -> unrolled ones ('layer_0', 'layer_1', ...)."""
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(num_layers):
        params[f"layer_{i}"] = jax.tree.map(lambda w, i=i: w[i], stacked)
    return params
