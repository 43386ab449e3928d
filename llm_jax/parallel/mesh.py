"""The device mesh. Mesh axis names live here (and in the config's rule table), nowhere in the model.

A mesh axis may span two networks: ICI inside a TPU slice or GPU node, and DCN across slices or nodes. The
devices are laid out so that each slice/node holds a contiguous ICI block (JAX's hybrid mesh helper).
"""

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from llm_jax.config.load import ConfigError
from llm_jax.config.validate import MESH_AXES, resolve_mesh, uses_dcn


def _slices_are_granules(devices: list) -> bool:
    # TPU devices name their slice; elsewhere (GPU nodes, CPU hosts) a process is the unit DCN connects.
    return devices[0].platform == "tpu" and hasattr(devices[0], "slice_index")


def granules(devices: list) -> int:
    """What DCN axes span: TPU slices, else processes (one per GPU node, or CPU host)."""
    if _slices_are_granules(devices):
        return len({d.slice_index for d in devices})
    return len({d.process_index for d in devices})


def make_mesh(shape: tuple[int, ...], devices: list | None = None,
              dcn_shape: tuple[int, ...] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes: XLA's partitioner propagates shardings (GSPMD style).
    `shape` is the whole mesh; with `dcn_shape`, it is ICI x DCN per axis and devices are placed accordingly."""
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if dcn_shape is not None and any(d > 1 for d in dcn_shape):
        devices = list(devices if devices is not None else jax.devices())
        ici_shape = tuple(s // d for s, d in zip(shape, dcn_shape, strict=True))
        try:
            array = mesh_utils.create_hybrid_device_mesh(
                ici_shape, dcn_shape, devices, process_is_granule=not _slices_are_granules(devices),
                allow_split_physical_axes=True)
        except ValueError as e:
            raise ConfigError(f"mesh.dcn_* {dict(zip(MESH_AXES, dcn_shape, strict=True))} does not fit these "
                              f"devices: {e}") from None
        return Mesh(array, MESH_AXES, axis_types=axis_types)
    if devices is None:  # let JAX order the devices for the physical topology
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_granules(mesh: ml_collections.ConfigDict, devices: list) -> int:
    """What the config's DCN axes span on `devices` (1 when no axis crosses slices / nodes)."""
    return granules(devices) if uses_dcn(mesh) else 1


def mesh_for(cfg: ml_collections.ConfigDict, devices: list | None, num_granules: int) -> Mesh:
    """The mesh that a validated config asks for, on `devices` (None: all) spanning `num_granules`."""
    devices = list(devices if devices is not None else jax.devices())
    ici, dcn = resolve_mesh(cfg.mesh, len(devices), num_granules)
    shape = tuple(i * d for i, d in zip(ici, dcn, strict=True))
    return make_mesh(shape, devices if devices != jax.devices() else None, dcn)
