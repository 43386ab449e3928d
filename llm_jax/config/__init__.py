"""Config: every key declared in `base.py`, loaded by `load.py`, checked by `validate.py`."""

from llm_jax.config.base import base_config
from llm_jax.config.load import ConfigError, load_config
from llm_jax.config.presets import build_config
from llm_jax.config.validate import validate

__all__ = ["ConfigError", "base_config", "build_config", "load_config", "validate"]
