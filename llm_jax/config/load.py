"""Load a `get_config()` file and apply `--config.a.b=value` overrides with one-line errors.

The syntax is the one ml_collections' `config_flags` uses (`--config=path.py:arg --config.a.b=v`); we parse it
ourselves so that a typo names the full key and the closest real ones instead of raising a bare AttributeError.
"""

import ast
import difflib
import importlib.util
import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from llm_jax.config.base import KEYS, base_config


class ConfigError(ValueError):
    """A bad config. The message is one line that names the key and the fix."""


def unknown_key(key: str, source: str) -> ConfigError:
    """The error for a key that base.py does not declare, with the closest declared keys and what they mean."""
    close = difflib.get_close_matches(key, list(KEYS), n=3)
    hint = (f"did you mean {close[0]} ({KEYS[close[0]].help})" + "".join(f" or {k}" for k in close[1:]) + "?"
            if close else "`llm-jax config` lists every key")
    return ConfigError(f"unknown config key '{key}' (from {source}); {hint}")


def _coerce(old: Any, value: Any, key: str, source: str) -> Any:
    """Convert `value` (a string from the command line, or a Python value) to the type of the default."""
    if isinstance(old, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if isinstance(old, float) and isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf"):
        value = float(value)  # a float all the same: the range check then says it must be finite
    if isinstance(value, str) and not isinstance(old, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if isinstance(old, bool) or old is None or isinstance(old, int | float | tuple):
                raise ConfigError(
                    f"config key '{key}' (from {source}) expects {type(old).__name__}, got {value!r}"
                ) from None
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' (from {source}) expects true/false, got {value!r}")
    if isinstance(old, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(old, tuple | list) and isinstance(value, tuple | list):
        return tuple(value)
    if isinstance(old, str) and isinstance(value, str):
        return value
    if old is None:
        return value
    raise ConfigError(
        f"config key '{key}' (from {source}) expects {type(old).__name__}, got {type(value).__name__} {value!r}"
    )


def get_key(cfg: ml_collections.ConfigDict, key: str) -> Any:
    """The value of a dotted key ('model.d_model')."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def set_key(cfg: ml_collections.ConfigDict, key: str, value: Any, source: str) -> None:
    """Set a dotted key that must already exist, converting the value to the declared type."""
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            raise unknown_key(key, source)
        node = node[p]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise unknown_key(key, source)
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"config key '{key}' (from {source}) is a section; set one of its keys instead")
    node[leaf] = _coerce(node[leaf], value, key, source)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any], source: str) -> None:
    for key, value in overrides.items():
        set_key(cfg, key, value, source)


def load_module(path: str | pathlib.Path, what: str = "config file") -> Any:
    path = pathlib.Path(path)
    if not path.is_file():
        hint = ("pass e.g. --config=configs/train.py:model=tiny,topology=cpu" if what == "config file" else
                "check the path (relative to the current directory)")
        raise ConfigError(f"{what} '{path}' not found; {hint}")
    spec = importlib.util.spec_from_file_location(f"_llm_jax_cfg_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`spec` is `path.py` or `path.py:arg`; `overrides` are `a.b=value` strings (without `--config.`)."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except (TypeError, AttributeError) as e:  # ConfigDict refuses a value of another type, or an unknown key
        raise ConfigError(f"config file '{path}': {str(e).splitlines()[0]}; keys and types are declared in "
                          "llm_jax/config/base.py") from None
    apply_flag_overrides(cfg, overrides)
    return cfg


def apply_flag_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """`a.b=value` strings from `--config.a.b=value` flags."""
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"override '--config.{item}' has no value; write --config.{key}=VALUE")
        set_key(cfg, key, value, f"--config.{key}")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys ('model.d_model')."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


# What a received file (a checkpoint, an exported .safetensors) may set: the model, its tokenizer, and what describes
# the evaluation data and shapes. How this machine runs (runtime.*, mesh.*, sharding.*, checkpoint.*, profile.*,
# monitor.*, reader counts) stays the user's own: a file could otherwise set XLA_FLAGS or a coordinator to dial.
RECEIVED_SECTIONS = ("model.", "objective.", "data.", "sample.")
# train.seed: the validation examples of masked LM and span corruption are drawn with it
RECEIVED_KEYS = ("model_preset", "train.seq_len", "train.global_batch", "train.eval_batches", "train.seed")
NOT_RECEIVED = ("data.workers", "data.threads", "data.prefetch")


def received(key: str) -> bool:
    """Whether a config read from a file someone gave us may set `key`."""
    return (key.startswith(RECEIVED_SECTIONS) or key in RECEIVED_KEYS) and key not in NOT_RECEIVED


def config_from_saved(saved: Mapping[str, Any], overrides: Iterable[str] = (), source: str = "the run's saved config",
                      ) -> tuple[ml_collections.ConfigDict, list[str], list[str]]:
    """The config a run saved (as JSON, in a checkpoint or an exported file) rebuilt on today's defaults, taking
    only the keys `received` allows, then the user's `a.b=value` overrides. Also, for the caller to report, the
    saved keys that no longer exist (dropped) and the keys for how to run that were not taken although their saved
    value is not the default (ignored; training-only keys, optimizer.* and the rest of train.*, are not listed)."""
    cfg, dropped, ignored = base_config(), [], []
    for key, value in flatten(saved).items():
        if not received(key):
            default = KEYS[key].default if key in KEYS else None
            if not key.startswith(("optimizer.", "train.")) and json.loads(json.dumps(default)) != value:
                ignored.append(key)  # JSON's view of the default: tuples are lists
            continue
        try:
            set_key(cfg, key, value, source)
        except ConfigError:
            dropped.append(key)
    apply_flag_overrides(cfg, overrides)
    return cfg, dropped, ignored
