"""Logical axis names -> NamedShardings, with errors that name the parameter, the axis and the fix."""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config.load import ConfigError
from llm_jax.config.validate import mesh_axes

Rules = Sequence[tuple[str, Any]]


def _path(keypath) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)


def check_rules_cover(boxed_params: Any, rules: Rules) -> None:
    """Every parameter must carry logical names, and every name must have a rule (None = replicate)."""
    known = {name for name, _ in rules}
    leaves = jax.tree_util.tree_leaves_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for keypath, leaf in leaves:
        if not isinstance(leaf, nn.Partitioned):
            raise ConfigError(f"parameter '{_path(keypath)}' has no logical axis names; declare it with "
                              "nn.with_logical_partitioning so it can be sharded")
        for name in leaf.names:
            if name is not None and name not in known:
                raise ConfigError(f"parameter '{_path(keypath)}' uses logical axis '{name}', which no rule in "
                                  f"sharding.rules covers; add ('{name}', <mesh axis or None>)")


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of (abstract) nn.Partitioned leaves; checks each sharded dim divides evenly."""
    specs = nn.get_partition_spec(boxed_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, tuple(tuple(r) for r in rules))
    leaves = jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for (keypath, leaf), sharding in zip(leaves, jax.tree.leaves(shardings), strict=True):
        value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        for dim, axes in zip(value.shape, sharding.spec, strict=False):
            axes = mesh_axes(axes)
            n = math.prod(mesh.shape[a] for a in axes)
            if dim % n:
                raise ConfigError(f"parameter '{_path(keypath)}' of shape {tuple(value.shape)} cannot be split "
                                  f"{n} ways over mesh axes {axes} (sharding {sharding.spec}); change the mesh "
                                  "or the model size so it divides")
    return shardings


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batches are [batch, length]: shard rows as the 'batch' rule says, keep each row whole."""
    spec = nn.logical_to_mesh_axes(("batch", "length"), tuple(tuple(r) for r in rules))
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Host-local numpy rows (this process's slice of the global batch) -> one global sharded jax.Array each."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
