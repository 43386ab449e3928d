"""The encoder-decoder transformer (T5 v1.1): the encoder reads the inputs both ways, the decoder predicts targets.

Layout as T5 v1.1: one input embedding shared by both stacks, pre-RMSNorm blocks without biases, gated-GELU MLPs,
a relative position bias (one table per stack, shared by its layers), unscaled attention scores, a final norm
per stack and an untied output head. Packed rows work: positions restart per document, and segment ids keep both
self- and cross-attention inside a document.

Generation calls `encode` once, then `decode` with a cache (see `init_cache`): {"k", "v": [N, B, S, G, K]} self-
attention slots and {"cross_k", "cross_v": [N, B, L, G, K]}, the cross-attention keys/values of the encoder
output, computed in the call that is given `enc_BLD` and reused as they are by the calls that are not.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from llm_jax.models.head import OutputHead
from llm_jax.models.layers import Attention, Mlp, Norm, constrain, weight
from llm_jax.models.mask import Mask, causal_mask, document_mask
from llm_jax.models.relative import relative_bias
from llm_jax.models.stack import run_stack

Array = jax.Array
KV = tuple[Array, Array]


def decoder_layers(model_cfg: FrozenConfigDict) -> int:
    return model_cfg.num_decoder_layers or model_cfg.num_layers


def init_cache(model_cfg: FrozenConfigDict, batch: int, length: int, enc_length: int) -> dict[str, Array]:
    """An empty cache for `batch` rows of up to `length` decoder tokens over `enc_length` encoder tokens."""
    c = model_cfg
    self_shape = (decoder_layers(c), batch, length, c.num_kv_heads, c.head_dim)
    cross_shape = (decoder_layers(c), batch, enc_length, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(self_shape, c.dtype), "v": jnp.zeros(self_shape, c.dtype),
            "cross_k": jnp.zeros(cross_shape, c.dtype), "cross_v": jnp.zeros(cross_shape, c.dtype)}


def position_bias(module: nn.Module, cfg: FrozenConfigDict, q_positions_BL: Array, k_positions_BS: Array,
                  bidirectional: bool) -> Array | None:
    """The stack's relative bias (its one table is declared here), or None when another position scheme is used."""
    if cfg.positions == "learned":
        raise ValueError("model.positions=learned is not supported by the encoder_decoder family; use relative "
                         "(T5) or rope")
    if cfg.positions != "relative":
        return None  # rope: Attention rotates queries and keys itself
    table_PH = weight(module, "relative_bias", (cfg.relative_buckets, cfg.num_heads), (None, "heads"), cfg)
    return relative_bias(table_PH, q_positions_BL, k_positions_BS, bidirectional=bidirectional,
                         max_distance=cfg.relative_max_distance)


class EncoderBlock(nn.Module):
    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask, positions_BL: Array,
                 bias_BHLS: Array | None) -> tuple[Array, None]:
        h_BLD = Norm(self.cfg, name="attn_norm")(x_BLD)
        attn_BLD, _ = Attention(self.cfg, scale_scores=False, name="attn")(h_BLD, mask, positions_BL,
                                                                          bias_BHLS=bias_BHLS)
        x_BLD = constrain(x_BLD + attn_BLD, ("batch", "length", "embed"))
        x_BLD = x_BLD + Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x_BLD))
        return constrain(x_BLD, ("batch", "length", "embed")), None


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, MLP. With a cache it returns its new self-
    attention slots, plus the cross keys/values when it computed them from `enc_BLD` (else they are `cross_kv`)."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BTD: Array, self_mask: Mask | None, positions_BT: Array, bias_BHTS: Array | None,
                 enc_BLD: Array | None, cross_mask: Mask, cache: KV | None = None,
                 cross_kv: KV | None = None) -> tuple[Array, tuple[KV, ...] | None]:
        c = self.cfg
        h_BTD = Norm(c, name="attn_norm")(x_BTD)
        attn_BTD, kv = Attention(c, scale_scores=False, name="attn")(h_BTD, self_mask, positions_BT, cache=cache,
                                                                     bias_BHLS=bias_BHTS)
        x_BTD = constrain(x_BTD + attn_BTD, ("batch", "length", "embed"))
        h_BTD = Norm(c, name="cross_norm")(x_BTD)
        cross_BTD, new_cross_kv = Attention(c, scale_scores=False, name="cross")(
            h_BTD, cross_mask, kv_BSD=enc_BLD if cross_kv is None else None, fixed_kv=cross_kv)
        x_BTD = constrain(x_BTD + cross_BTD, ("batch", "length", "embed"))
        x_BTD = x_BTD + Mlp(c, name="mlp")(Norm(c, name="mlp_norm")(x_BTD))
        x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
        if cache is None:
            return x_BTD, None
        return x_BTD, (kv,) if cross_kv is not None else (kv, new_cross_kv)


class EncoderStack(nn.Module):
    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BLD: Array, segment_ids_BL: Array, positions_BL: Array) -> Array:
        c = self.cfg
        bias_BHLS = position_bias(self, c, positions_BL, positions_BL, bidirectional=True)
        mask = document_mask(segment_ids_BL, segment_ids_BL)
        x_BLD, _ = run_stack(EncoderBlock, c, c.num_layers, x_BLD, (mask, positions_BL, bias_BHLS))
        return Norm(c, name="final_norm")(x_BLD)


class DecoderStack(nn.Module):
    """The decoder's blocks and final norm (the hidden states before the output head); see EncoderDecoder.decode."""

    cfg: FrozenConfigDict

    @nn.compact
    def __call__(self, x_BTD: Array, segment_ids_BT: Array, positions_BT: Array, enc_BLD: Array | None,
                 encoder_segment_ids_BL: Array,
                 cache: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array] | None]:
        c = self.cfg
        if cache is None:
            self_mask, key_positions_BS = causal_mask(segment_ids_BT), positions_BT
        else:  # slot s of the cache holds position s; Attention makes the mask from the slots
            self_mask, key_positions_BS = None, jnp.arange(cache["k"].shape[2])[None]
        bias_BHTS = position_bias(self, c, positions_BT, key_positions_BS, bidirectional=False)
        cross_mask = document_mask(segment_ids_BT, encoder_segment_ids_BL)
        shared = (self_mask, positions_BT, bias_BHTS, enc_BLD, cross_mask)
        per_layer = ()
        if cache is not None:
            per_layer = ((cache["k"], cache["v"]),)
            if enc_BLD is None:
                per_layer += ((cache["cross_k"], cache["cross_v"]),)
        x_BTD, outs = run_stack(DecoderBlock, c, decoder_layers(c), x_BTD, shared, per_layer)
        x_BTD = Norm(c, name="final_norm")(x_BTD)
        if cache is None:
            return x_BTD, None
        (k_NBSGK, v_NBSGK), *computed = outs
        cross_k, cross_v = computed[0] if computed else (cache["cross_k"], cache["cross_v"])
        return x_BTD, {"k": k_NBSGK, "v": v_NBSGK, "cross_k": cross_k, "cross_v": cross_v}


class EncoderDecoder(nn.Module):
    """`cfg` is the (finalized, frozen) `config.model` section; `num_layers` counts the encoder's blocks.

    `__call__` is training: packed encoder rows and packed decoder rows (same segment ids for the same document)
    -> logits_BTV. Generation uses `encode` and `decode` through `model.apply(..., method=...)`.
    """

    cfg: FrozenConfigDict

    def setup(self) -> None:
        c = self.cfg
        self.embedding = weight(self, "embedding", (c.vocab_size, c.d_model), ("vocab", "embed"), c)
        if not c.tie_embeddings:
            self.unembed = weight(self, "unembed", (c.d_model, c.vocab_size), ("embed", "vocab"), c)
        self.encoder = EncoderStack(c)
        self.decoder = DecoderStack(c)

    @staticmethod
    def inputs(example: dict) -> dict:
        """The model's arguments from a span-corruption example (objectives/example.py)."""
        return {"encoder_tokens_BL": example["encoder_inputs"],
                "encoder_segment_ids_BL": example["encoder_segment_ids"],
                "encoder_positions_BL": example["encoder_positions"],
                "tokens_BT": example["decoder_inputs"], "segment_ids_BT": example["segment_ids"],
                "positions_BT": example["positions"]}

    def embed(self, tokens_BL: Array) -> Array:
        return constrain(jnp.take(self.embedding, tokens_BL, axis=0), ("batch", "length", "embed"))

    def encode(self, encoder_tokens_BL: Array, encoder_segment_ids_BL: Array,
               encoder_positions_BL: Array) -> Array:
        """enc_BLD: the encoder's output (after its final norm), what cross-attention reads."""
        return self.encoder(self.embed(encoder_tokens_BL), encoder_segment_ids_BL, encoder_positions_BL)

    def decode(self, tokens_BT: Array, segment_ids_BT: Array, positions_BT: Array, enc_BLD: Array | None,
               encoder_segment_ids_BL: Array,
               cache: dict[str, Array] | None = None,
               head_only: bool = False) -> Array | OutputHead | tuple[Array, dict[str, Array]]:
        """logits_BTV; with `cache`, (logits_BTV, new cache). Cached rows hold one document each (segment ids 1 for
        the decoder, the encoder's own for its tokens) and this call's tokens go to slots `positions_BT`. Pass
        `enc_BLD` in the first cached call, which stores the cross keys/values, and None after. `head_only`: the
        OutputHead (models/head.py) the logits are made from, for training."""
        c = self.cfg
        if head_only and cache is not None:
            raise ValueError("head_only=True is for training on packed rows; generation with a cache needs logits")
        x_BTD, new_cache = self.decoder(self.embed(tokens_BT), segment_ids_BT, positions_BT, enc_BLD,
                                        encoder_segment_ids_BL, cache)
        if c.tie_embeddings:  # T5 v1.0 rescales the shared embedding when it doubles as the output head
            head = OutputHead(x_BTD * c.d_model**-0.5, self.embedding.T)
        else:
            head = OutputHead(x_BTD, self.unembed)
        if head_only:
            return head
        logits_BTV = head.logits()
        return logits_BTV if cache is None else (logits_BTV, new_cache)

    def __call__(self, encoder_tokens_BL: Array, encoder_segment_ids_BL: Array, encoder_positions_BL: Array,
                 tokens_BT: Array, segment_ids_BT: Array, positions_BT: Array,
                 head_only: bool = False) -> Array | OutputHead:
        enc_BLD = self.encode(encoder_tokens_BL, encoder_segment_ids_BL, encoder_positions_BL)
        return self.decode(tokens_BT, segment_ids_BT, positions_BT, enc_BLD, encoder_segment_ids_BL,
                           head_only=head_only)
