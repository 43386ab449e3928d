"""Models know shapes and logical axis names only: no mesh, optimizer, data or checkpoint code."""

from llm_jax.models.decoder import Decoder
from llm_jax.models.families import FAMILIES, Family, build_model, family_of, flops_per_token
from llm_jax.models.stack import unstack_layers

__all__ = ["FAMILIES", "Decoder", "Family", "build_model", "family_of", "flops_per_token", "unstack_layers"]
