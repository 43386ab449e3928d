"""`llm-jax export`: a checkpoint's parameters as one safetensors file, under the portable names of params.py."""

import json
import pathlib

import jax
import ml_collections
import numpy as np

from llm_jax.checkpoint import safetensors
from llm_jax.checkpoint.params import (
    CheckpointError,
    abstract_like,
    find_step_dir,
    portable,
    read_meta,
    restore_params,
    saved_tree,
)
from llm_jax.models.families import FAMILIES


def export(source: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None,
           dtype: str = "") -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """Write the parameters of `source` (a workdir, or a checkpoints/<step> directory; `step`: that step instead of
    the latest) to `out`, cast to `dtype` if given. Returns the step directory read and the tensors written."""
    step_dir, tensors, meta = read_checkpoint(source, step)
    if dtype:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    metadata = {"format": "llm_jax", "step": step_dir.name, "config": json.dumps(meta.get("config", {})),
                "tokenizer": json.dumps(meta.get("tokenizer", {}))}
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    safetensors.write(out, tensors, metadata)
    return step_dir, tensors


def read_checkpoint(source: str | pathlib.Path, step: int | None = None,
                    ) -> tuple[pathlib.Path, dict[str, np.ndarray], dict]:
    """(the step directory, its parameters under portable names on the host, its metadata) of `source`: a workdir
    (its latest checkpoint, or `step`'s) or a checkpoints/<step> directory."""
    step_dir = find_step_dir(pathlib.Path(source) / "checkpoints" / str(step) if step is not None else source)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])  # never fills accelerator memory
    abstract = abstract_like(saved_tree(step_dir)["params"], host)
    tensors = portable(restore_params(step_dir, abstract))
    meta = read_meta(step_dir)
    _check_layers(tensors, meta.get("config", {}).get("model", {}), step_dir)
    return step_dir, tensors, meta


def _check_layers(tensors: dict[str, np.ndarray], model: dict, where: pathlib.Path) -> None:
    """Every layer of every stack the model's family declares has its entries (`<stack>layers.<i>.`), and no other
    layer does: a file that would load into a different depth is never written."""
    family = FAMILIES.get(model.get("family", "decoder"))
    if family is None or "num_layers" not in model:
        return  # not a config this version knows: portable() named what the checkpoint holds
    stacks = family.stacks(ml_collections.ConfigDict({"num_decoder_layers": 0, **model}))
    for stack, n in stacks.items():
        prefix = f"{stack}.layers." if stack else "layers."
        found = {int(k[len(prefix):].split(".")[0]) for k in tensors if k.startswith(prefix)}
        if found != set(range(n)):
            raise CheckpointError(f"{where} holds layers {sorted(found)} under '{prefix}', its config says {n}; "
                                  "the checkpoint does not match its own config")
