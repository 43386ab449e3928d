"""`llm-jax hf export`: an llm_jax model (a run's checkpoint, or a parameter file from `export` / `hf import`) as a
Hugging Face directory that `transformers.AutoModelFor*.from_pretrained` loads: config.json, model.safetensors
(sharded with an index above a size limit), generation_config.json and the tokenizer's files.

The architecture is the one whose config, read back by the importer, gives the model's own keys: a model that no
Hugging Face architecture here expresses (e.g. a BERT with rotary positions) is refused with the keys that differ.
"""

import json
import pathlib
import re
import shutil

import numpy as np

from llm_jax.checkpoint.params import is_hf_directory, read_exported, saved_meta
from llm_jax.config.base import base_config
from llm_jax.hf import bert, gpt2, llama, qwen2, t5
from llm_jax.hf.importer import HFError, read_portable
from llm_jax.hf.mapping import write_all

BY_FAMILY = {"decoder": (llama, qwen2, gpt2), "encoder": (bert,), "encoder_decoder": (t5,)}
# Keys that change the model's function but that some importers never set: their value when absent.
IMPLIED = {"qk_norm": False, "norm_position": "pre", "type_vocab_size": 0, "rope_scaling": "none", "qkv_bias": False}
DEFAULT_SHARD_BYTES = 5 * 2**30  # transformers' own default for save_pretrained


def model_dict(saved_model: dict, tensors: dict[str, np.ndarray] | None = None) -> dict:
    """The saved model keys on today's defaults, with the derived ones (0 = 'as the heads') made explicit; the
    vocabulary from the embedding when the tensors are given."""
    m = {**base_config().model.to_dict(), **saved_model}
    m["num_kv_heads"] = m["num_kv_heads"] or m["num_heads"]
    m["head_dim"] = m["head_dim"] or m["d_model"] // m["num_heads"]
    m["num_decoder_layers"] = m["num_decoder_layers"] or m["num_layers"]
    if tensors is not None and "embedding" in tensors:
        m["vocab_size"] = int(tensors["embedding"].shape[0])  # the padded vocabulary the model was built with
    return m


def _differences(arch, m: dict) -> list[str]:
    try:
        back = arch.model_keys(arch.hf_config(m))
    except ValueError as e:  # a setting the architecture does not have at all
        return [str(e)]
    keys = [*back, *(k for k in IMPLIED if k not in back)]
    if m["positions"] != "rope":
        keys = [k for k in keys if not k.startswith("rope_")]
    return [f"model.{k}={m[k]!r} ({arch.ARCHITECTURE} has {back.get(k, IMPLIED.get(k))!r})"
            for k in keys if back.get(k, IMPLIED.get(k)) != m.get(k)]


def choose_architecture(m: dict):
    """The architecture module that expresses the model `m` exactly; HFError naming the keys that differ if none."""
    candidates = BY_FAMILY.get(m["family"], ())
    tried = {arch.ARCHITECTURE: _differences(arch, m) for arch in candidates}
    for arch in candidates:
        if not tried[arch.ARCHITECTURE]:
            return arch
    closest = min(tried.items(), key=lambda kv: len(kv[1]))
    raise HFError(f"this model.family={m['family']!r} model has no Hugging Face architecture: the closest, "
                  f"{closest[0]}, differs in {'; '.join(closest[1])}")


def read_tensors(where: pathlib.Path) -> dict[str, np.ndarray]:
    """The portable tensors of what saved_meta found."""
    if where.suffix == ".safetensors":
        return read_exported(where)[0]
    if is_hf_directory(where):
        return read_portable(where)[1]
    from llm_jax.checkpoint.export import read_checkpoint

    return read_checkpoint(where)[1]


# What an export writes; a directory holding anything else is not replaced by --overwrite.
EXPORTED = re.compile(r"^(config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|"
                      r"model\.safetensors\.index\.json|tokenizer(_config)?\.json|tokenizer\.model|"
                      r"special_tokens_map\.json)$")


def check_out(out: pathlib.Path, source: pathlib.Path, overwrite: bool) -> None:
    """Refuse an --out that would replace the source, or anything but an earlier export."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise HFError(f"--out={out} is or holds the source {source}; give a new directory")
    if not out.exists():
        return
    if not overwrite:
        raise HFError(f"{out} exists; pass --overwrite to replace it, or give another directory")
    others = sorted(p.name for p in out.iterdir() if not EXPORTED.match(p.name)) if out.is_dir() else [out.name]
    if others:
        raise HFError(f"--out={out} holds {', '.join(others[:3])}, which an export does not write; --overwrite only "
                      "replaces an earlier export: give another directory")


def _shards(tensors: dict[str, np.ndarray], limit: int) -> list[dict[str, np.ndarray]]:
    shards, size = [{}], 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards


def write_weights(directory: pathlib.Path, tensors: dict[str, np.ndarray], limit: int) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors and their index when the tensors exceed `limit`."""
    from safetensors.numpy import save_file

    shards = _shards(tensors, limit)
    if len(shards) == 1:
        save_file(tensors, directory / "model.safetensors", {"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, directory / name, {"format": "pt"})
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
             "weight_map": {k: name for name, shard in zip(names, shards, strict=True) for k in shard}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [*names, "model.safetensors.index.json"]


def export_hf(source: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None, dtype: str = "",
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
              tokenizer_path: str = "") -> tuple[str, pathlib.Path, list]:
    """Write `source` as a Hugging Face directory `out` (a new directory, or with `overwrite` an earlier export;
    built beside it and renamed into place, so a failure or kill leaves no half directory and the old one is
    replaced only when the new one is complete). Everything that can be refused is checked before the tensors are
    read. Returns the architecture, where the parameters were read, and the files written."""
    from llm_jax.hf.tokenizer_files import write_tokenizer

    out = pathlib.Path(out)
    where, saved = saved_meta(source, step)
    check_out(out, where, overwrite)  # `where` is the source or inside it (a workdir's checkpoints/<step>)
    if not saved["config"].get("model"):
        raise HFError(f"{where} holds no model config; it was not written by `llm-jax train`, `export` or "
                      "`hf import`")
    arch = choose_architecture(model_dict(saved["config"]["model"]))
    building = out.with_name(out.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)  # a kill's leftover: never read, safe to replace
    building.mkdir(parents=True)
    try:
        if saved["tokenizer"]:
            specials, files = write_tokenizer(building, saved["config"], saved["tokenizer"], tokenizer_path)
        else:  # imported without tokenizer files: none to write, the source's own ids (if it named them) kept
            specials, files = {k: v for k, v in saved["ids"].items() if isinstance(v, int)}, []
        if saved["config"]["model"].get("family") != "encoder_decoder":
            specials.pop("decoder_start_token_id", None)  # only an encoder-decoder's generate() reads it
        tensors = read_tensors(where)
        m = model_dict(saved["config"]["model"], tensors)
        try:
            hf_tensors = dict(write_all(arch.table(m), tensors))
        except KeyError as e:
            raise HFError(f"{where}: {e.args[0]}") from None
        del tensors
        if dtype:
            hf_tensors = {k: v.astype(dtype) for k, v in hf_tensors.items()}
        files = [*write_weights(building, hf_tensors, max_shard_bytes), *files]
        config = {**arch.hf_config(m), "architectures": [arch.ARCHITECTURE],
                  "dtype": str(next(iter(hf_tensors.values())).dtype), **specials}
        (building / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files.append("config.json")
        if m["family"] != "encoder":  # what generate() reads: the ids that start, end and pad
            (building / "generation_config.json").write_text(json.dumps(specials, indent=2) + "\n")
            files.append("generation_config.json")
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            building.rename(out)
            shutil.rmtree(old)
        else:
            building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return arch.ARCHITECTURE, where, files

