"""The device mesh. Mesh axis names live here (and in the config's rule table), nowhere in the model."""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from llm_jax.config.validate import MESH_AXES


def make_mesh(shape: tuple[int, ...], devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes: XLA's partitioner propagates shardings (GSPMD style)."""
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if devices is None:  # let JAX order the devices for the physical topology
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)
