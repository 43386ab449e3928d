"""Activation layouts by logical axis names, and the one way to run a model on a mesh.

`on_mesh(mesh, rules)` enters the mesh and the logical axis rules together; every entry point that runs a model
(train, eval, sample, plan, benchmarks) uses it. A model traced under a multi-device mesh without rules would drop
its activation constraints silently, so `constrain` makes that an error.
"""

import contextlib
from collections.abc import Iterator

import flax.linen as nn
import jax


@contextlib.contextmanager
def on_mesh(mesh: jax.sharding.Mesh, rules) -> Iterator[None]:
    """Run (and trace) models on `mesh` with the logical axis `rules` (config `sharding.rules`)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(tuple(r) for r in rules)):
        yield


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation's layout by logical names; a no-op without a mesh (one device)."""
    if not nn.get_logical_axis_rules():
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty and mesh.size > 1:
            raise RuntimeError(f"a model was traced on a mesh of {mesh.size} devices without logical axis rules: "
                               "its activations would not be laid out; run it inside "
                               "llm_jax.models.layout.on_mesh(mesh, rules)")
    return nn.with_logical_constraint(x, axes)
