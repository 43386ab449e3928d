"""Model families: what each declares so that the rest of the code never asks which one it has.

A family is its module (a file in models/), the objectives it can learn (the first is its default), its layer
stacks (their export prefixes; stack.py names the layers inside them) and its training FLOPs per token, which
the MFU log and the planner read. A new family is one file and one entry here.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from llm_jax.models.decoder import Decoder
from llm_jax.models.encoder import Encoder
from llm_jax.models.encoder_decoder import EncoderDecoder


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    module: type[nn.Module]
    objectives: tuple[str, ...]  # the first is the default
    stacks: Callable[[ml_collections.ConfigDict], dict[str, int]]  # export prefix of each layer stack -> layers
    # Training (forward + backward) model FLOPs per input token, given (config.model, seq_len, target_len): the
    # decoder length of an encoder-decoder example, 0 for the others.
    flops_per_token: Callable[[ml_collections.ConfigDict, int, int], float]


def attention_params(m: ml_collections.ConfigDict) -> int:
    return m.d_model * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)


def mlp_params(m: ml_collections.ConfigDict) -> int:
    return (3 if m.mlp in ("swiglu", "geglu") else 2) * m.d_model * m.mlp_dim


def attention_flops(m: ml_collections.ConfigDict, num_layers: int, keys: int) -> float:
    """Per query token: Q K^T and P V, 2 matmuls x 2 FLOPs x 3 (forward + backward), no causal discount."""
    return 12.0 * num_layers * m.num_heads * m.head_dim * keys


def decoder_flops(m: ml_collections.ConfigDict, seq_len: int, target_len: int = 0) -> float:
    """6 x (per layer the q/k/v/o projections and the MLP, plus the output projection) + attention (PaLM's
    appendix B formula). The input embedding lookup and norms are not matmuls and are not counted."""
    matmul = m.num_layers * (attention_params(m) + mlp_params(m)) + m.d_model * m.vocab_size
    return 6.0 * matmul + attention_flops(m, m.num_layers, seq_len)


def encoder_flops(m: ml_collections.ConfigDict, seq_len: int, target_len: int = 0) -> float:
    """The decoder's count plus the MLM head's D->D transform; attention is bidirectional, so every query sees all
    seq_len keys (no causal discount either way)."""
    matmul = m.num_layers * (attention_params(m) + mlp_params(m)) + m.d_model * m.d_model + m.d_model * m.vocab_size
    return 6.0 * matmul + attention_flops(m, m.num_layers, seq_len)


def encoder_decoder_flops(m: ml_collections.ConfigDict, seq_len: int, target_len: int) -> float:
    """Per encoder input token (seq_len of them; target_len decoder tokens go with them): 6 x the matmul weights
    each token passes (encoder blocks; decoder self-attention, cross-attention, MLP and the output projection) +
    attention (an encoder query sees seq_len keys, a decoder query target_len own and seq_len encoder keys)."""
    n_dec = m.num_decoder_layers or m.num_layers
    encoder = m.num_layers * (attention_params(m) + mlp_params(m))
    decoder = n_dec * (2 * attention_params(m) + mlp_params(m)) + m.d_model * m.vocab_size
    total = (6.0 * (encoder * seq_len + decoder * target_len) + attention_flops(m, m.num_layers, seq_len) * seq_len
             + attention_flops(m, n_dec, target_len + seq_len) * target_len)
    return total / seq_len


FAMILIES: dict[str, Family] = {
    "decoder": Family("decoder", Decoder, ("causal_lm", "prefix_lm"), lambda m: {"": m.num_layers},
                      decoder_flops),
    "encoder": Family("encoder", Encoder, ("masked_lm",), lambda m: {"": m.num_layers}, encoder_flops),
    "encoder_decoder": Family("encoder_decoder", EncoderDecoder, ("span_corruption",),
                              lambda m: {"encoder": m.num_layers, "decoder": m.num_decoder_layers or m.num_layers},
                              encoder_decoder_flops),
}


def family_of(model_cfg: ml_collections.ConfigDict) -> Family:
    return FAMILIES[model_cfg.family]


def build_model(model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """The model for a finalized `config.model` section (frozen, so the module is hashable)."""
    return family_of(model_cfg).module(ml_collections.FrozenConfigDict(model_cfg))


def flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int, target_len: int = 0) -> float:
    """Training (forward + backward) model FLOPs per input token, as the model's family counts them."""
    return family_of(model_cfg).flops_per_token(model_cfg, seq_len, target_len)
