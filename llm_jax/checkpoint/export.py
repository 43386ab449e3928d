"""`llm-jax export`: a checkpoint's parameters as one safetensors file, under the portable names of params.py."""

import json
import pathlib

import jax
import numpy as np

from llm_jax.checkpoint import safetensors
from llm_jax.checkpoint.params import abstract_like, find_step_dir, portable, read_meta, restore_params, saved_tree


def export(source: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None,
           dtype: str = "") -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """Write the parameters of `source` (a workdir, or a checkpoints/<step> directory; `step`: that step instead of
    the latest) to `out`, cast to `dtype` if given. Returns the step directory read and the tensors written."""
    step_dir = find_step_dir(pathlib.Path(source) / "checkpoints" / str(step) if step is not None else source)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])  # never fills accelerator memory
    abstract = abstract_like(saved_tree(step_dir)["params"], host)
    tensors = portable(restore_params(step_dir, abstract))
    if dtype:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    meta = read_meta(step_dir)
    metadata = {"format": "llm_jax", "step": step_dir.name, "config": json.dumps(meta.get("config", {})),
                "tokenizer": json.dumps(meta.get("tokenizer", {}))}
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    safetensors.write(out, tensors, metadata)
    return step_dir, tensors
