"""The encoder-only transformer (BERT): a pure function (params, tokens, segment_ids, positions) -> logits_BLV.

Every token sees every other token of its own packed document (bidirectional attention); the masked-LM head
predicts a token at every position and the objective's loss weights pick the masked ones. norm_position="post"
is BERT (a norm after the embedding sum and after each residual add); "pre" is the decoder's block layout with a
final norm, which trains more stably at depth.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.head import OutputHead
from llm_jax.models.layers import Attention, Mlp, Norm, bias, constrain, dense, token_inputs, weight
from llm_jax.models.mask import Mask, document_mask
from llm_jax.models.stack import run_stack

Array = jax.Array


class Block(nn.Module):
    """One residual block, post-norm (BERT) or pre-norm (GPT-2 layout). Returns (x, None) so it works under
    nn.scan. Both layouts name their norms attn_norm / mlp_norm; only where they sit differs."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask, positions_BL: Array) -> tuple[Array, None]:
        c = self.cfg
        attn, mlp = Attention(c, name="attn"), Mlp(c, name="mlp")
        attn_norm, mlp_norm = Norm(c, name="attn_norm"), Norm(c, name="mlp_norm")
        if c.norm_position == "post":
            x_BLD = attn_norm(x_BLD + attn(x_BLD, mask, positions_BL)[0])
            x_BLD = constrain(x_BLD, ("batch", "length", "embed"))
            x_BLD = mlp_norm(x_BLD + mlp(x_BLD))
        else:
            x_BLD = x_BLD + attn(attn_norm(x_BLD), mask, positions_BL)[0]
            x_BLD = constrain(x_BLD, ("batch", "length", "embed"))
            x_BLD = x_BLD + mlp(mlp_norm(x_BLD))
        return constrain(x_BLD, ("batch", "length", "embed")), None


class MlmHead(nn.Module):
    """BERT's prediction head: dense D->D with bias, GELU, norm, then the output projection plus a per-token bias.

    The D->D transform, its bias, the output bias and the norm's LayerNorm kind hold whatever model.use_bias and
    model.norm say: they are part of BERT's head, not of its blocks, so a BERT checkpoint maps onto it as is."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, embed_VD: Array, head_only: bool = False) -> Array | OutputHead:
        c = self.cfg
        V, D = c.vocab_size, c.d_model
        h_BLD = dense(x_BLD, weight(self, "wi", (D, D), ("embed", None), c)) + bias(self, "bi", (D,), (None,), c)
        h_BLD = jax.nn.gelu(h_BLD, approximate=c.mlp != "gelu_exact")
        layernorm = c.as_configdict()
        layernorm.norm = "layernorm"
        h_BLD = Norm(FrozenConfigDict(layernorm), name="norm")(h_BLD)
        unembed_DV = embed_VD.T if c.tie_embeddings else weight(self, "unembed", (D, V), ("embed", "vocab"), c)
        # Named "bias" so the optimizer's decay mask leaves it alone, like the norms' biases.
        head = OutputHead(h_BLD, unembed_DV, bias(self, "bias", (V,), ("vocab",), c))
        return head if head_only else head.logits()


class Encoder(nn.Module):
    """`cfg` is the (finalized, frozen) `config.model` section. Returns logits_BLV for packed rows: attention
    never crosses a document boundary (segment_ids), and padding (segment 0) only sees padding."""

    cfg: FrozenConfigDict

    @staticmethod
    def inputs(example: dict) -> dict:
        """The model's arguments from an example (objectives/example.py): token types if the example has them."""
        return token_inputs(example, {"token_types": "token_types_BL"})

    @nn.compact
    def __call__(self, tokens_BL: Array, segment_ids_BL: Array, positions_BL: Array,
                 token_types_BL: Array | None = None, head_only: bool = False) -> Array | OutputHead:
        """logits_BLV; with `head_only`, the OutputHead (models/head.py) they are made from."""
        c = self.cfg
        V, D = c.vocab_size, c.d_model
        if c.positions == "relative":
            raise ValueError("model.positions='relative' is T5's bias and the encoder family does not build it; "
                             "use model.positions='learned' (BERT) or 'rope'")
        if token_types_BL is not None and c.type_vocab_size == 0:
            raise ValueError("token types were given but model.type_vocab_size=0 has no table for them; set "
                             "model.type_vocab_size (2 in BERT)")
        embed_VD = weight(self, "embedding", (V, D), ("vocab", "embed"), c)
        x_BLD = jnp.take(embed_VD, tokens_BL, axis=0)
        if c.positions == "learned":
            pos_PD = weight(self, "pos_embedding", (c.max_seq_len, D), (None, "embed"), c)
            x_BLD = x_BLD + jnp.take(pos_PD, positions_BL, axis=0)
        if c.type_vocab_size > 0:
            # Without token types every token is sentence A, as in BERT when token_type_ids are left out.
            types_BL = jnp.zeros_like(tokens_BL) if token_types_BL is None else token_types_BL
            type_TD = weight(self, "type_embedding", (c.type_vocab_size, D), (None, "embed"), c)
            x_BLD = x_BLD + jnp.take(type_TD, types_BL, axis=0)
        if c.norm_position == "post":
            x_BLD = Norm(c, name="embed_norm")(x_BLD)
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))

        # One mask for all layers: the same document, either direction.
        mask = document_mask(segment_ids_BL, segment_ids_BL)
        x_BLD, _ = run_stack(Block, c, c.num_layers, x_BLD, (mask, positions_BL))

        if c.norm_position == "pre":
            x_BLD = Norm(c, name="final_norm")(x_BLD)
        return MlmHead(c, name="mlm_head")(x_BLD, embed_VD, head_only)
