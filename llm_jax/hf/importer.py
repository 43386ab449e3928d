"""`llm-jax hf import`: a local Hugging Face model directory -> llm_jax config keys and portable tensors.

Reads `config.json` and `model.safetensors` (or the shards a `model.safetensors.index.json` lists) one tensor at a
time through the `safetensors` package, so no more than one tensor is copied at once.
"""

import contextlib
import json
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from llm_jax.hf import bert, gpt2, llama, qwen2, t5
from llm_jax.hf.mapping import read_all

ARCHITECTURES = {"bert": bert, "gpt2": gpt2, "llama": llama, "mistral": llama, "qwen2": qwen2, "t5": t5}


class HFError(ValueError):
    """A Hugging Face directory that cannot be imported; the message names the file and what is wrong."""


def read_config(directory: pathlib.Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise HFError(f"{directory} has no config.json: give a Hugging Face model directory (save_pretrained's)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFError(f"{path} is not valid JSON ({e})") from None
    if hf.get("model_type") not in ARCHITECTURES:
        raise HFError(f"{path}: model_type {hf.get('model_type')!r} is not supported; supported: "
                      f"{', '.join(sorted(ARCHITECTURES))}")
    return hf


def _legacy(name: str) -> str | None:
    """The name a file from before PyTorch renamed LayerNorm's parameters uses (transformers still reads it)."""
    for new, old in ((".weight", ".gamma"), (".bias", ".beta")):
        if "LayerNorm" in name and name.endswith(new):
            return name[: -len(new)] + old
    return None


def tensor_reader(directory: pathlib.Path, aliases: dict[str, str] | None = None,
                  ) -> tuple[Callable[[str], np.ndarray], Callable[[], None]]:
    """read(name) -> the array as stored (float32, bfloat16 or float16), from model.safetensors or the shards of
    its index, falling back to `aliases[name]` or a legacy LayerNorm name where the file lacks `name`; and close()."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFError(f"{index} is not a safetensors index (no weight_map: {e})") from None
    elif (directory / "model.safetensors").is_file():
        with safe_open(directory / "model.safetensors", framework="numpy") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        raise HFError(f"{directory} has neither model.safetensors nor model.safetensors.index.json")
    opened: dict[str, object] = {}

    def read(name: str) -> np.ndarray:
        stored = next((n for n in (name, (aliases or {}).get(name), _legacy(name)) if n in weight_map), None)
        if stored is None:
            raise HFError(f"{directory} lacks tensor {name!r}, which this architecture needs")
        shard = weight_map[stored]
        if shard not in opened:
            if not (directory / shard).is_file():
                raise HFError(f"{directory}: {shard}, which holds {stored!r}, is missing")
            opened[shard] = safe_open(directory / shard, framework="numpy").__enter__()
        array = opened[shard].get_tensor(stored)
        if array.dtype.name not in ("float32", "bfloat16", "float16"):
            raise HFError(f"{directory}: tensor {stored!r} is {array.dtype}, not a float (quantized files are not "
                          "supported)")
        return array

    def close() -> None:
        for f in opened.values():
            f.__exit__(None, None, None)

    return read, close


def import_hf(directory: str | pathlib.Path) -> tuple[dict, Iterator[tuple[str, np.ndarray]], Callable[[], None]]:
    """(llm_jax model keys, the portable tensors one by one, close) of a Hugging Face model directory."""
    directory = pathlib.Path(directory)
    hf = read_config(directory)
    arch = ARCHITECTURES[hf["model_type"]]
    try:
        keys = arch.model_keys(hf)
    except (KeyError, TypeError, ValueError) as e:
        raise HFError(f"{directory / 'config.json'}: {e if isinstance(e, ValueError) else f'no {e}'}") from None
    read, close = tensor_reader(directory, getattr(arch, "ALIASES", None))
    try:
        if hasattr(arch, "check"):
            arch.check(read, keys)
    except ValueError as e:
        close()
        raise HFError(f"{directory}: {e}") from None
    return keys, read_all(arch.table(keys), read), close


@contextlib.contextmanager
def portable_source(directory: str | pathlib.Path,
                    ) -> Iterator[tuple[list[str], Callable[[str], np.ndarray], dict]]:
    """(the portable names, read(name) of one of them, hf_run_config) of a Hugging Face directory, read on demand
    one tensor at a time (the other parts of a fused tensor wait until asked for), so that the parameters can be
    placed on the devices without a copy of the whole model in host memory."""
    directory = pathlib.Path(directory)
    saved = hf_run_config(directory)
    arch = ARCHITECTURES[read_config(directory)["model_type"]]
    keys = saved["config"]["model"]
    table = arch.table(keys)
    by_name = {name: t for t in table for name in t.ours}
    waiting: dict[str, np.ndarray] = {}
    hf_read, close = tensor_reader(directory, getattr(arch, "ALIASES", None))

    def read(name: str) -> np.ndarray:
        if name not in waiting:
            t = by_name[name]
            waiting.update(zip(t.ours, t.to_ours(hf_read(t.hf)), strict=True))
        return waiting.pop(name)

    try:
        yield list(by_name), read, saved
    finally:
        close()


def hf_run_config(directory: str | pathlib.Path) -> dict:
    """{'config': the llm_jax config keys a Hugging Face directory stands for (its model; its tokenizer.json, if it
    has one), 'tokenizer': that tokenizer's identity ({} without one)}, after checking the config and tensors."""
    from llm_jax.data.tokenizer import make_tokenizer

    directory = pathlib.Path(directory).absolute()
    keys, _, close = import_hf(directory)  # reads no tensor data; checks the config and the tensor names it needs
    close()
    from llm_jax.config.base import base_config

    # The default training length, unless the model's positions end sooner.
    config = {"model": keys, "model_preset": f"hf:{read_config(directory)['model_type']}",
              "train": {"seq_len": min(base_config().train.seq_len, keys["max_seq_len"])}}
    tokenizer = {}
    if (directory / "tokenizer.json").is_file():
        config["data"] = {"tokenizer": "hf", "tokenizer_path": str(directory)}
        try:
            tokenizer = make_tokenizer("hf", str(directory)).identity()
        except ValueError as e:  # a ConfigError: e.g. no eos token named in the directory's files
            raise HFError(str(e)) from None
    return {"config": config, "tokenizer": tokenizer}


def read_portable(directory: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The llm_jax model keys and every portable tensor of a Hugging Face directory, held together in host memory
    (read one tensor at a time; the files are closed afterwards, also on an error)."""
    keys, tensors, close = import_hf(directory)
    try:
        return keys, dict(tensors)
    finally:
        close()


def write_import(directory: str | pathlib.Path, out: str | pathlib.Path) -> tuple[dict, int]:
    """Write a Hugging Face model directory as an llm_jax parameter file (`llm-jax export`'s format): the portable
    tensors as stored (float32, bfloat16 or float16), and the config and tokenizer identity of hf_run_config, which
    `sample`, `eval`, `hf export`, `model=FILE` and `checkpoint.init_from` read. Returns the model keys and the
    number of parameters."""
    from llm_jax.checkpoint import safetensors as st

    directory = pathlib.Path(directory).absolute()
    saved = hf_run_config(directory)
    keys, portable = read_portable(directory)
    metadata = {"format": "llm_jax", "step": "", "config": json.dumps(saved["config"]),
                "tokenizer": json.dumps(saved["tokenizer"]), "source": str(directory)}
    st.write(out, portable, metadata)
    return keys, sum(int(np.prod(a.shape)) for a in portable.values())
