"""Objectives: what a model learns to predict from packed rows. One file each; the registry is here.

`config.objective.name` picks one ('' = the model family's default); `make_objective` builds it for a tokenizer.
"""

import ml_collections

from llm_jax.config.load import ConfigError
from llm_jax.data.tokenizer import DEFAULT_SPECIALS, Specials, Tokenizer
from llm_jax.models.families import family_of
from llm_jax.objectives.base import Objective, ToExample
from llm_jax.objectives.causal_lm import CausalLM
from llm_jax.objectives.example import Example, ExampleSpec
from llm_jax.objectives.masked_lm import MaskedLM
from llm_jax.objectives.prefix_lm import PrefixLM
from llm_jax.objectives.span_corruption import SpanCorruption

OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (CausalLM, PrefixLM, MaskedLM, SpanCorruption)}


def objective_name(cfg: ml_collections.ConfigDict) -> str:
    """`objective.name`, or the model family's default; an error if the family cannot learn it."""
    family = family_of(cfg.model)
    name = cfg.objective.name or family.objectives[0]
    if name not in family.objectives:
        raise ConfigError(f"objective.name={name!r} does not fit model.family={family.name!r}, which learns "
                          f"{', '.join(family.objectives)}; change one of them")
    return name


def extra_tokens(cfg: ml_collections.ConfigDict, specials: Specials = DEFAULT_SPECIALS) -> int:
    """Ids the objective adds after the tokenizer's: none for what the tokenizer has ([MASK], sentinels)."""
    return OBJECTIVES[objective_name(cfg)].extra_tokens(cfg, specials)


def make_objective(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer) -> Objective:
    return OBJECTIVES[objective_name(cfg)](cfg, tokenizer)


__all__ = ["OBJECTIVES", "Example", "ExampleSpec", "Objective", "ToExample", "extra_tokens", "make_objective",
           "objective_name"]
