"""Turn `model=NAME,topology=NAME` into a config: the base config with both presets applied. NAME may also be a
parameter file (`model=gpt2.safetensors`) or a Hugging Face model directory: its model and tokenizer, fine-tuned
from its parameters."""

import pathlib

import ml_collections

from llm_jax.config.base import base_config
from llm_jax.config.load import ConfigError, apply_overrides, load_module

DEFAULTS = {"model": "tiny", "topology": "cpu"}
TARGET_KEYS = ("devices", "processes", "slices")  # what a topology preset is for: read by the planner, not config keys


def parse_preset_arg(arg: str) -> dict[str, str]:
    """'model=tiny,topology=cpu' -> {'model': 'tiny', 'topology': 'cpu'}, missing ones from DEFAULTS."""
    chosen = dict(DEFAULTS)
    for item in filter(None, (s.strip() for s in arg.split(","))):
        kind, eq, name = item.partition("=")
        if not eq or kind not in DEFAULTS:
            raise ConfigError(
                f"bad preset choice '{item}' after ':' in --config; write e.g. "
                "--config=configs/train.py:model=tiny,topology=cpu"
            )
        chosen[kind] = name
    return chosen


def _preset(presets: dict, kind: str, name: str) -> dict:
    if name not in presets:
        raise ConfigError(f"unknown {kind} preset '{name}' in --config=...:{kind}={name}; "
                          f"choose one of: {', '.join(sorted(presets))}")
    return presets[name]


# What `model=FILE.safetensors` takes from the file's config: the model, and the tokenizer its ids belong to.
FROM_FILE = ("model.", "data.tokenizer", "data.tokenizer_path", "train.seq_len")


def file_preset(path: pathlib.Path) -> dict:
    """`model=FILE.safetensors` or `model=DIR` (a Hugging Face model directory): the model and tokenizer keys (and
    the training length) of a parameter file (from `llm-jax export` or `llm-jax hf import`) or directory, and
    `checkpoint.init_from` = it, so a run fine-tunes that model."""
    from llm_jax.checkpoint.params import CheckpointError, saved_meta
    from llm_jax.config.load import flatten

    try:
        saved = saved_meta(path)[1]["config"]
    except (CheckpointError, OSError) as e:
        raise ConfigError(f"model={path} in --config: not a parameter file with a config ({e}); give a file "
                          "written by `llm-jax export` or `llm-jax hf import`") from None
    keys = {k: v for k, v in flatten(saved).items() if k.startswith(FROM_FILE)}
    if not any(k.startswith("model.") for k in keys):
        raise ConfigError(f"model={path} in --config: the file holds no model config; give a file written by "
                          "`llm-jax export` or `llm-jax hf import`")
    return {**keys, "checkpoint.init_from": str(path.absolute())}


def build_config(arg: str, models_file: pathlib.Path, topologies_file: pathlib.Path) -> ml_collections.ConfigDict:
    chosen = parse_preset_arg(arg)
    cfg = base_config()
    # The topology first, then the model: a model preset's own choices (e.g. the 8B model's full remat) win over
    # the hardware's defaults; command-line overrides win over both.
    topology = _preset(load_module(topologies_file, "topology preset file").PRESETS, "topology", chosen["topology"])
    topology = {k: v for k, v in topology.items() if k not in TARGET_KEYS}
    apply_overrides(cfg, topology, f"topology preset '{chosen['topology']}'")
    if chosen["model"].endswith(".safetensors") or (pathlib.Path(chosen["model"]) / "config.json").is_file():
        model = file_preset(pathlib.Path(chosen["model"]))
    else:
        model = _preset(load_module(models_file, "model preset file").PRESETS, "model", chosen["model"])
        # Plain names are model keys; dotted ones (e.g. "train.seq_len") are a preset's recommended run settings.
        model = {k if "." in k else f"model.{k}": v for k, v in model.items()}
    apply_overrides(cfg, model, f"model preset '{chosen['model']}'")
    cfg.model_preset = chosen["model"]
    cfg.topology_preset = chosen["topology"]
    return cfg
