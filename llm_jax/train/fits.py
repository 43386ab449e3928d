"""Will the training state fit in the devices' memory? Counted from abstract shapes and the parameter shardings
before anything is allocated, so a model far too big ends with one line (the estimate and the limit) instead of an
allocation failure deep inside XLA.

Counted: parameters, optimizer state, and a floor under the activations (the float32 logits and one residual
stream per layer for each token a device holds, which the backward pass needs whatever the remat policy).
Gradients and the rest come on top, so a refusal here is certain, and passing here is no promise (`llm-jax plan`
compiles the step and reports the whole).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from llm_jax.config.load import ConfigError
from llm_jax.config.validate import mesh_axes
from llm_jax.models.families import attention_params, mlp_params
from llm_jax.monitor.hardware import GIB, physical_memory_bytes
from llm_jax.objectives.example import ExampleSpec
from llm_jax.train.state import abstract_params


def _bytes_on_one_device(leaf: jax.ShapeDtypeStruct, sharding: NamedSharding) -> int:
    """The largest shard (rounded up where a dimension does not divide, which shard_shape() would refuse)."""
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    ways = [math.prod(sharding.mesh.shape[a] for a in mesh_axes(entry)) for entry in spec]
    return math.prod(-(-dim // n) for dim, n in zip(leaf.shape, ways, strict=True)) * leaf.dtype.itemsize


def state_bytes(model: nn.Module, example: ExampleSpec | int, tx: optax.GradientTransformation,
                params_sh: Any) -> tuple[int, int]:
    """(parameter count, bytes of parameters + optimizer state on one device), from shapes only. `example`: the
    objective's example spec (an int: a decoder example of that length)."""
    params = nn.unbox(abstract_params(model, example))
    opt = jax.eval_shape(tx.init, params)
    # Optimizer moments are sharded like their parameters (as create_train_state places them); scalars replicated.
    opt_bytes = optax.tree_map_params(tx, _bytes_on_one_device, opt, params_sh,
                                      transform_non_params=lambda x: x.size * x.dtype.itemsize)
    param_bytes = jax.tree.map(_bytes_on_one_device, params, params_sh)
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    return count, sum(jax.tree.leaves(param_bytes)) + sum(jax.tree.leaves(opt_bytes))


def device_memory(devices: list) -> tuple[int, list] | None:
    """(bytes one of this process's devices can hold, those devices): on CPU the host's RAM, which its CPU devices
    share; on an accelerator its memory limit. None when the device does not report it."""
    local = [d for d in devices if d.process_index == jax.process_index()]
    if local[0].platform == "cpu":
        return physical_memory_bytes(), local
    limit = (local[0].memory_stats() or {}).get("bytes_limit")
    return (limit, local) if limit else None


def param_count_from_config(m: ml_collections.ConfigDict) -> int:
    """Parameters of the model a (finalized) `model` config describes, from its sizes alone (norms left out):
    counted before a module is built, since building one with a million layers is itself the problem."""
    layer = attention_params(m) + mlp_params(m)
    # An encoder-decoder's decoder layers also cross-attend.
    decoder = (m.num_decoder_layers or m.num_layers) * (layer + attention_params(m)) \
        if m.family == "encoder_decoder" else 0
    embed = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    return embed + m.num_layers * layer + decoder + (m.max_seq_len * m.d_model if m.positions == "learned" else 0)


def check_size(cfg: ml_collections.ConfigDict, devices: list, copies: int) -> None:
    """Refuse, before the model is built, a model whose `copies` of the parameters (3 to train: the parameters
    and Adam's two moments; 1 to evaluate) cannot fit in all of `devices`' memory together, however sharded."""
    memory = device_memory(devices)
    if memory is None:
        return
    per_device, local = memory
    if local[0].platform == "cpu":
        have, where = per_device, "this host's RAM is"
    else:
        have, where = per_device * len(devices), f"{len(devices)} x {local[0].device_kind} have"
    count = param_count_from_config(cfg.model)
    need = count * copies * np.dtype(cfg.model.param_dtype).itemsize
    if need > have:
        m = cfg.model
        raise ConfigError(
            f"the model does not fit: {count:,} parameters ({copies} copies to {'train' if copies > 1 else 'run'}) "
            f"need at least {need / GIB:,.1f} GiB but {where} {have / GIB:,.1f} GiB; shrink it (model.num_layers="
            f"{m.num_layers}, model.d_model={m.d_model}, model.mlp_dim={m.mlp_dim}, model.vocab_size={m.vocab_size}) "
            "or see `llm-jax plan`")


def activation_floor_bytes(cfg: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """Bytes that one device's micro-batch needs at least: float32 logits (of one chunk with train.loss_chunk) and
    a residual per layer per token."""
    t, m = cfg.train, cfg.model
    batch_ways = math.prod(mesh.shape[a] for r in cfg.sharding.rules if r[0] == "batch" for a in mesh_axes(r[1]))
    rows = -(-t.global_batch // t.grad_accum // batch_ways)
    logit_positions = min(t.loss_chunk, t.seq_len) if t.loss_chunk else t.seq_len
    return rows * (logit_positions * m.vocab_size + t.seq_len * m.d_model * m.num_layers) * 4


def check_fits(cfg: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, params_sh: Any,
               mesh: Mesh, example: ExampleSpec) -> None:
    """Raise ConfigError when parameters + optimizer state exceed a device's memory (on CPU: the RAM that this
    process's CPU devices share). Devices that do not report their memory are not checked."""
    count, per_device = state_bytes(model, example, tx, params_sh)
    per_device += activation_floor_bytes(cfg, mesh)
    memory = device_memory(list(mesh.devices.flat))
    if memory is None:
        return
    have, local = memory
    if local[0].platform == "cpu":
        need, where = per_device * len(local), f"this host's RAM (shared by its {len(local)} CPU device(s)) is"
    else:
        need, where = per_device, f"one {local[0].device_kind} has"
    if need > have:
        m = cfg.model
        raise ConfigError(
            f"the training state does not fit: {count:,} parameters with their optimizer state and the activations "
            f"of {cfg.train.global_batch:,} x {cfg.train.seq_len} tokens per step need at least {need / GIB:,.1f} GiB "
            f"but {where} {have / GIB:,.1f} GiB; shrink the model (model.vocab_size={m.vocab_size}, model.d_model="
            f"{m.d_model}, model.num_layers={m.num_layers}, model.mlp_dim={m.mlp_dim}) or the batch "
            f"(train.global_batch, train.grad_accum), shard over more devices (mesh.fsdp), or see `llm-jax plan`")
