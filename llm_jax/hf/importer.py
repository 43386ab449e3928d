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
from llm_jax.hf.mapping import converted, read_all

ARCHITECTURES = {"bert": bert, "gpt2": gpt2, "llama": llama, "mistral": llama, "qwen2": qwen2, "t5": t5}


class HFError(ValueError):
    """A Hugging Face directory that cannot be imported; the message names the file and what is wrong."""


def read_config(directory: pathlib.Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise HFError(f"{directory} has no config.json: give a Hugging Face model directory (save_pretrained's)")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise HFError(f"{path} holds a JSON {type(hf).__name__}, not an object: not a Hugging Face config")
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


def _opened(path: pathlib.Path):
    """A safetensors file opened for reading by name; a damaged one is an HFError naming it."""
    from safetensors import safe_open

    try:
        return safe_open(path, framework="numpy").__enter__()
    except Exception as e:  # SafetensorError: truncated, empty or not a safetensors file
        raise HFError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); download it "
                      "again") from None


def _weight_map(directory: pathlib.Path) -> dict[str, str]:
    """Tensor name -> the file in `directory` holding it (model.safetensors, or the shards its index lists)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise HFError(f"{index} is not a safetensors index (no weight_map: {e})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and pathlib.PurePath(v).name == v and v not in ("", "..")
                for k, v in weight_map.items()):
            raise HFError(f"{index}: weight_map must map tensor names to shard files inside {directory}")
    elif (directory / "model.safetensors").is_file():
        f = _opened(directory / "model.safetensors")
        weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        f.__exit__(None, None, None)
    else:
        raise HFError(f"{directory} has neither model.safetensors nor model.safetensors.index.json")
    return weight_map


def tensor_reader(directory: pathlib.Path, aliases: dict[str, str] | None = None,
                  ) -> tuple[Callable[[str], np.ndarray], Callable[[], None]]:
    """read(name) -> the array as stored (float32, bfloat16 or float16), from model.safetensors or the shards of
    its index, falling back to `aliases[name]` or a legacy LayerNorm name where the file lacks `name`; and close()."""
    weight_map = _weight_map(directory)
    opened: dict[str, object] = {}

    def read(name: str) -> np.ndarray:
        stored = next((n for n in (name, (aliases or {}).get(name), _legacy(name)) if n in weight_map), None)
        if stored is None:
            raise HFError(f"{directory} lacks tensor {name!r}, which this architecture needs")
        shard = weight_map[stored]
        if shard not in opened:
            if not (directory / shard).is_file():
                raise HFError(f"{directory}: {shard}, which holds {stored!r}, is missing")
            opened[shard] = _opened(directory / shard)
        try:
            array = opened[shard].get_tensor(stored)
        except Exception as e:  # the package's SafetensorError, also for a name the shard does not hold
            raise HFError(f"{directory / shard}: cannot read {stored!r} ({str(e).splitlines()[0]})") from None
        if array.dtype.name not in ("float32", "bfloat16", "float16"):
            raise HFError(f"{directory}: tensor {stored!r} is {array.dtype}; only float32, bfloat16 and float16 "
                          "weights are read (quantized files are not supported)")
        return array

    def close() -> None:
        for f in opened.values():
            f.__exit__(None, None, None)

    return read, close


def _check_types(keys: dict) -> None:
    """The translated keys have the types (and sizes the signs) llm_jax declares: a string where a number belongs is
    named here, not found later as a shape that cannot be built."""
    from llm_jax.config.base import base_config

    declared = base_config().model
    for k, v in keys.items():
        want = type(declared[k])
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if want is float else type(v) is want
        if not ok:
            raise ValueError(f"the value for model.{k} is {v!r}, not {'a number' if want is float else want.__name__}")
        if want is int and v <= 0:
            raise ValueError(f"the value for model.{k} is {v}; sizes must be positive")


def import_hf(directory: str | pathlib.Path) -> tuple[dict, Iterator[tuple[str, np.ndarray]], Callable[[], None]]:
    """(llm_jax model keys, the portable tensors one by one, close) of a Hugging Face model directory."""
    directory = pathlib.Path(directory)
    hf = read_config(directory)
    arch = ARCHITECTURES[hf["model_type"]]
    try:
        keys = arch.model_keys(hf)
        _check_types(keys)
    except KeyError as e:
        raise HFError(f"{directory / 'config.json'}: no {e}") from None
    except (TypeError, ValueError, ArithmeticError) as e:
        raise HFError(f"{directory / 'config.json'}: {e}") from None
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
            try:
                waiting.update(converted(by_name[name], hf_read(by_name[name].hf)))
            except ValueError as e:  # a shape config.json does not imply
                raise HFError(f"{directory}: {e}") from None
        return waiting.pop(name)

    try:
        yield list(by_name), read, saved
    finally:
        close()


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def hf_run_config(directory: str | pathlib.Path) -> dict:
    """What a Hugging Face directory stands for in llm_jax: {'config': its model keys, tokenizer keys (its
    tokenizer.json, else a SentencePiece tokenizer.model; none: the config's default) and a training length,
    'tokenizer': that tokenizer's identity ({} without one), 'ids': config.json's special ids}, after checking the
    config, the tensor names it needs and the tokenizer's files (no tensor data is read for an untied model)."""
    from llm_jax.config.base import base_config
    from llm_jax.data.tokenizer import make_tokenizer

    directory = pathlib.Path(directory).absolute()
    keys, _, close = import_hf(directory)
    close()
    hf = read_config(directory)
    # The default training length, unless the model's positions end sooner.
    config = {"model": keys, "model_preset": f"hf:{hf['model_type']}",
              "train": {"seq_len": min(base_config().train.seq_len, keys["max_seq_len"])}}
    found = [(kind, path) for kind, path in (("hf", directory / "tokenizer.json"),
                                             ("sentencepiece", directory / "tokenizer.model")) if path.is_file()]
    tokenizer = {}
    if found:
        kind, path = found[0]
        config["data"] = {"tokenizer": kind, "tokenizer_path": str(path if kind == "sentencepiece" else directory)}
        try:
            made = make_tokenizer(kind, config["data"]["tokenizer_path"])
            tokenizer = made.identity()
        except Exception as e:  # ConfigError (no eos named), or the tokenizer library's own parse error
            why = str(e).splitlines()[0] if str(e) else repr(e)
            raise HFError(f"{path}: the tokenizer cannot be read ({why})") from None
        if made.vocab_size > keys["vocab_size"]:
            raise HFError(f"{path} has {made.vocab_size} tokens, more than the model's vocab_size "
                          f"{keys['vocab_size']} in config.json: they do not belong together")
    ids = {k: hf[k] for k in SPECIAL_IDS if type(hf.get(k)) is int}
    return {"config": config, "tokenizer": tokenizer, "ids": ids}


def read_portable(directory: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The llm_jax model keys and every portable tensor of a Hugging Face directory, held together in host memory
    (read one tensor at a time; the files are closed afterwards, also on an error)."""
    keys, tensors, close = import_hf(directory)
    try:
        return keys, dict(tensors)
    except HFError:
        raise
    except ValueError as e:  # a shape config.json does not imply
        raise HFError(f"{directory}: {e}") from None
    finally:
        close()


def unused_tensors(directory: str | pathlib.Path) -> list[str]:
    """Tensors of the directory that the import leaves out: a checkpoint with more layers than config.json says,
    or heads llm_jax has no place for (BERT's pooler and next-sentence head, tied copies of the embedding)."""
    directory = pathlib.Path(directory)
    hf = read_config(directory)
    arch = ARCHITECTURES[hf["model_type"]]
    aliases = getattr(arch, "ALIASES", {})
    used = set()
    for t in arch.table(arch.model_keys(hf)):
        used |= {t.hf, aliases.get(t.hf), _legacy(t.hf)}
    return sorted(name for name in _weight_map(directory) if name not in used)


def write_import(directory: str | pathlib.Path, out: str | pathlib.Path) -> tuple[dict, int]:
    """Write a Hugging Face model directory as an llm_jax parameter file (`llm-jax export`'s format): the portable
    tensors as stored (float32, bfloat16 or float16), and the config and tokenizer identity of hf_run_config, which
    `sample`, `eval`, `hf export`, `model=FILE` and `checkpoint.init_from` read. Returns the model keys and the
    number of parameters."""
    from llm_jax.checkpoint import safetensors as st

    directory, out = pathlib.Path(directory).absolute(), pathlib.Path(out).absolute()
    if directory.resolve() in out.resolve().parents:
        raise HFError(f"--out={out} is inside the directory being imported; write it elsewhere")
    if not out.parent.is_dir():
        raise HFError(f"--out={out}: the directory {out.parent} does not exist")
    saved = hf_run_config(directory)
    keys, portable = read_portable(directory)
    metadata = {"format": "llm_jax", "step": "", "config": json.dumps(saved["config"]),
                "tokenizer": json.dumps(saved["tokenizer"]), "ids": json.dumps(saved["ids"]),
                "source": str(directory)}
    st.write(out, portable, metadata)
    return keys, sum(int(np.prod(a.shape)) for a in portable.values())
