"""Parameters alone: read them from a run's checkpoint or an exported file, and name them portably.

Portable names (used by `llm-jax export` and accepted by `checkpoint.init_from`): the module path joined by dots,
with each layer of a stack as `layers.<i>.` whether the model scans its layers (one stacked array per weight) or
not (`layer_<i>` modules; models/stack.py names both), e.g. `embedding`, `layers.0.attn.wq`, `layers.11.mlp.wo`,
`final_norm.scale`, and for an encoder-decoder `encoder.layers.3.attn.wq`, `decoder.layers.0.cross_attn.wk`.
Shapes and layouts are the model's own (see docs in README "Checkpoints and resuming").
"""

import json
import logging
import pathlib
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from llm_jax.checkpoint import safetensors
from llm_jax.checkpoint.integrity import damage, unreadable
from llm_jax.models.stack import SCANNED_PATH, UNROLLED_PATH


def _stacked(name: str) -> tuple[str, str] | None:
    """A scanned stack's array `<stack>.layers.<weight>` -> ('<stack>.layers.', '<weight>'); else None."""
    m = SCANNED_PATH.search(name)
    return (name[: m.end()], name[m.end():]) if m else None


def _unrolled(name: str) -> str:
    """`<stack>.layer_<i>.<weight>` -> `<stack>.layers.<i>.<weight>`."""
    return UNROLLED_PATH.sub(r"\1layers.\2.", name)


class CheckpointError(RuntimeError):
    """A checkpoint (or exported file) cannot be used for this run; the message says why and what to do."""


def _flat(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."): leaf for path, leaf in leaves}


def portable(params) -> dict[str, np.ndarray]:
    """Host copies of the parameters under their portable names, layer by layer, layers in order."""
    out = {}
    for name, leaf in _flat(params).items():
        if stacked := _stacked(name):
            stack = np.asarray(jax.device_get(leaf))
            for i in range(stack.shape[0]):
                out[f"{stacked[0]}{i}.{stacked[1]}"] = stack[i]
        else:
            out[_unrolled(name)] = np.asarray(jax.device_get(leaf))
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple:
    """Embeddings first, then each stack layer by layer, then the rest."""
    m = re.match(r"^(.*?)layers\.(\d+)\.(.*)$", name)
    return (1, m.group(1), int(m.group(2)), m.group(3)) if m else (0 if name.startswith("embed") else 2, "", 0, name)


def _arrangement(names: set[str], abstract, where: str) -> dict[str, list[str]]:
    """For each of the model's flat parameter names, the portable names it is made of (a scanned stack: one per
    layer, stacked in order); a CheckpointError naming what only the file or only the model has."""
    out, left, problems = {}, set(names), []
    for name, target in _flat(abstract).items():
        if stacked := _stacked(name):
            keys = [f"{stacked[0]}{i}.{stacked[1]}" for i in range(target.shape[0])]
        else:
            keys = [_unrolled(name)]
        missing = [k for k in keys if k not in left]
        if missing:
            problems.append(f"{missing[0] if not stacked else f'{stacked[0]}*.{stacked[1]}'}: only in the model")
        left -= set(keys)
        out[name] = keys
    problems += [f"{k}: only in the file" for k in sorted(left)]
    if problems:
        raise CheckpointError(f"{where} holds another model: {_shown(problems)}")
    return out


def _assembled(read: Callable[[str], np.ndarray], keys: list[str], target, flat_name: str, where: str) -> np.ndarray:
    stacked = _stacked(flat_name)
    want = tuple(target.shape[1:] if stacked else target.shape)
    parts = []
    for k in keys:  # each layer checked before stacking: a wrong one is named, not a stacking error
        parts.append(read(k))
        if tuple(parts[-1].shape) != want:
            raise CheckpointError(f"{where} holds another model: {k}: file {tuple(parts[-1].shape)}, model {want}")
    return np.stack(parts) if stacked else parts[0]


def from_portable(tensors: dict[str, np.ndarray], abstract, where: str) -> dict[str, np.ndarray]:
    """`tensors` (portable names) arranged as the model's flat parameter names, shape-checked against `abstract`."""
    flat = _flat(abstract)
    return {name: _assembled(tensors.__getitem__, keys, flat[name], name, where)
            for name, keys in _arrangement(set(tensors), abstract, where).items()}


def place_portable(read: Callable[[str], np.ndarray], names: Iterable[str], abstract, where: str) -> Any:
    """The parameters, sharded as `abstract`, from portable tensors that `read(name)` gives one at a time: one
    model array (a stack's layers together) is on the host at once, so a model bigger than host memory still loads
    when its devices hold it. Names are checked against the model before anything is read."""
    flat, arrangement = _flat(abstract), _arrangement(set(names), abstract, where)
    leaves = []
    for name, keys in arrangement.items():
        host = _assembled(read, keys, flat[name], name, where)
        leaves.append(_place_one(host, flat[name]))
        del host
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def _shown(problems: list[str]) -> str:
    return "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")


def check_same_shapes(saved, now, where: pathlib.Path) -> None:
    """An error naming each array whose shape differs between a checkpoint (`saved`) and the model (`now`)."""
    saved = {k: tuple(v.shape) for k, v in _flat(saved).items()}
    now = {k: tuple(v.shape) for k, v in _flat(now).items()}
    problems = [f"{k}: checkpoint {saved[k]}, model {now[k]}" for k in sorted(saved.keys() & now.keys())
                if saved[k] != now[k]]
    problems += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - now.keys())]
    problems += [f"{k}: only in the model" for k in sorted(now.keys() - saved.keys())]
    if problems:
        raise CheckpointError(f"{where} holds another model: {_shown(problems)}. Use the config it was trained "
                              "with (see its config.json), or a new workdir")


EARLIER = "give an earlier one with --step=N (`llm-jax train` on the run moves a damaged one aside)"


def find_step_dir(path: str | pathlib.Path) -> pathlib.Path:
    """A checkpoint step directory from a run's workdir (its latest whole checkpoint), its checkpoints/ directory,
    or the step directory."""
    path = pathlib.Path(path).absolute()  # orbax reads relative paths as nothing (no metadata, no error)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run's workdir, its checkpoints/ directory, a "
                              "checkpoints/<step> directory, or a .safetensors file from `llm-jax export`")
    if (path / "state").is_dir():
        problems = damage(path)
        if problems:
            raise CheckpointError(f"{path} is damaged ({'; '.join(problems[:3])}); {EARLIER}")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted((int(p.name) for p in root.glob("*") if p.name.isdigit() and (p / "state").is_dir()
                    and not damage(p)), reverse=True) if root.is_dir() else []
    if not steps:
        raise CheckpointError(f"{path} holds no whole checkpoint; give a run's workdir, its checkpoints/ directory, "
                              "a checkpoints/<step> directory, or a .safetensors file from `llm-jax export`")
    return root / str(steps[0])


class _NoItemMetadataWarning(logging.Filter):
    """Reading one item of a manager's step directory, orbax warns that the item has no step metadata file: that
    is how the manager lays items out, so the warning says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoItemMetadataWarning())


def read_meta(step_dir: pathlib.Path) -> dict:
    """The checkpoint's meta item (config, tokenizer, mesh, step), checked to belong to its directory's step."""
    try:
        meta = dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta"))
    except Exception as e:  # orbax raises many kinds for a file it cannot read
        raise CheckpointError(unreadable(step_dir, "reading the saved config of", e, when_damaged=EARLIER)) from e
    wrong = step_mismatch(step_dir, meta.get("step"))
    if wrong:
        raise CheckpointError(wrong)
    return meta


def step_mismatch(step_dir: pathlib.Path, saved_step: int | None) -> str | None:
    """The error when a checkpoints/<step> directory holds another step's state (copied or renamed by hand);
    None when it matches or cannot be told (no saved step, a directory not named by its step)."""
    if saved_step is None or not step_dir.name.isdigit() or saved_step == int(step_dir.name):
        return None
    return (f"{step_dir} holds the state of step {saved_step}, not {step_dir.name} (renamed or copied by hand?); "
            f"rename it to {saved_step} or move it out of {step_dir.parent}")


def saved_tree(step_dir: pathlib.Path):
    """The checkpoint's state tree, with shapes and dtypes, read from its metadata."""
    try:
        metadata = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).metadata(step_dir / "state")
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        if tree is None:  # orbax only logs a warning when it cannot read it
            raise FileNotFoundError("orbax found no array metadata")
    except Exception as e:
        raise CheckpointError(unreadable(step_dir, "reading the array list of", e, when_damaged=EARLIER)) from e
    return tree


def abstract_like(tree, shardings) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays (or saved array metadata), placed with `shardings`: a matching tree of
    shardings, or one sharding for every array. Restoring onto them needs no memory for the old values."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=s), tree, shardings)


def restore_params(step_dir: pathlib.Path, abstract) -> Any:
    """Only the `params` item of a checkpoint's state, placed as `abstract` (ShapeDtypeStructs with shardings)."""
    check_same_shapes(saved_tree(step_dir)["params"], abstract, step_dir)
    target = {"params": abstract}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    try:
        restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(step_dir / "state", args=args)
    except Exception as e:
        raise CheckpointError(unreadable(step_dir, "reading the parameters of", e, when_damaged=EARLIER)) from e
    return restored["params"]


def json_field(metadata: dict[str, str], key: str, path: pathlib.Path) -> dict:
    """A JSON object kept as a string in an exported file's metadata ({} when absent)."""
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata '{key}' is not JSON ({e}); write the file again with "
                              "`llm-jax export`") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata '{key}' is not a JSON object; write the file again with "
                              "`llm-jax export`")
    return value


def _place_one(host: np.ndarray, target) -> jax.Array:
    """A host array as `target`'s sharded array; each process reads only the slices its devices hold."""
    return jax.make_array_from_callback(target.shape, target.sharding,
                                        lambda index: np.asarray(host[index], target.dtype))


def _place(flat: dict[str, np.ndarray], abstract) -> Any:
    """Host arrays as the sharded tree `abstract`."""
    named = _flat(abstract)
    return jax.tree.unflatten(jax.tree.structure(abstract), [_place_one(flat[k], v) for k, v in named.items()])


def is_hf_directory(path: pathlib.Path) -> bool:
    """A Hugging Face model directory (config.json beside its safetensors weights), not a run's workdir (which has
    a config.json too, but never these weights)."""
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))


def check_source(path: str | pathlib.Path) -> None:
    """Fail early (before anything compiles) when `path` is neither an exported file, a Hugging Face model
    directory nor a checkpoint."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        read_exported_header(path)
    elif is_hf_directory(path):
        from llm_jax.hf.importer import HFError, hf_run_config

        try:
            hf_run_config(path)
        except HFError as e:
            raise CheckpointError(str(e)) from None
    else:
        find_step_dir(path)


def read_exported_header(path: pathlib.Path) -> dict[str, str]:
    """An exported file's metadata, after checking that its header is valid (nothing of the data is read)."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return safetensors.read_header(path)
    except safetensors.SafetensorsError as e:
        raise CheckpointError(str(e)) from None


def saved_meta(path: str | pathlib.Path, step: int | None = None) -> tuple[pathlib.Path, dict]:
    """Where the parameters of `path` are, and {'config', 'tokenizer', 'ids'}: the run config, tokenizer identity
    and (a file imported without a tokenizer) the source's special ids. `path`: a run's workdir (its latest
    checkpoint, or `step`'s), a checkpoints/<step> directory, a parameter file or a Hugging Face model directory.
    Only metadata is read."""
    path = pathlib.Path(path)
    if step is not None and (path.suffix == ".safetensors" or is_hf_directory(path)):
        raise CheckpointError(f"--step is for a run's workdir; {path} holds one set of parameters")
    if path.suffix == ".safetensors":
        metadata = read_exported_header(path)
        return path, {k: json_field(metadata, k, path) for k in ("config", "tokenizer", "ids")}
    if is_hf_directory(path):
        from llm_jax.hf.importer import HFError, hf_run_config

        try:
            return path, hf_run_config(path)
        except HFError as e:
            raise CheckpointError(str(e)) from None
    step_dir = find_step_dir(path / "checkpoints" / str(step) if step is not None else path)
    meta = read_meta(step_dir)
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(f"{step_dir}: the saved config is not a JSON object; this is not a checkpoint of "
                              "`llm-jax train`")
    return step_dir, {"config": meta.get("config", {}), "tokenizer": meta.get("tokenizer", {}), "ids": {}}


def read_exported(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An exported file's tensors and metadata; a damaged or crafted file is a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return safetensors.read(path)
    except safetensors.SafetensorsError as e:
        raise CheckpointError(str(e)) from None


def load_params(path: str | pathlib.Path, abstract) -> tuple[Any, dict]:
    """Parameters from a checkpoint (see find_step_dir) or an exported .safetensors file, placed as `abstract`;
    and the source's metadata (its tokenizer identity under "tokenizer", and "step")."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist")
        try:
            with safetensors.opened(path) as (names, read, metadata):
                source = {"tokenizer": json_field(metadata, "tokenizer", path), "step": metadata.get("step")}
                return place_portable(read, names, abstract, str(path)), source
        except safetensors.SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    if is_hf_directory(path):
        from llm_jax.hf.importer import HFError, portable_source

        try:
            with portable_source(path) as (names, read, saved):
                return place_portable(read, names, abstract, str(path)), {"tokenizer": saved["tokenizer"], "step": None}
        except HFError as e:
            raise CheckpointError(str(e)) from None
    step_dir = find_step_dir(path)
    meta = read_meta(step_dir)
    return restore_params(step_dir, abstract), {"tokenizer": meta.get("tokenizer", {}), "step": int(step_dir.name)}
