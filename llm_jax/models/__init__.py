"""Models know shapes and logical axis names only: no mesh, optimizer, data or checkpoint code."""

import ml_collections

from llm_jax.models.transformer import Transformer, unstack_layers


def build_model(model_cfg: ml_collections.ConfigDict) -> Transformer:
    """The model for a finalized `config.model` section (frozen, so the module is hashable)."""
    return Transformer(ml_collections.FrozenConfigDict(model_cfg))


__all__ = ["Transformer", "build_model", "unstack_layers"]
