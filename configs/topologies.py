"""Topology presets, picked with `--config=configs/train.py:topology=NAME`. Each changes mesh/runtime keys.

`-1` in a mesh axis means "all devices the other axes leave over".
"""

PRESETS = {
    # One CPU device: the laptop / CI default.
    "cpu": {"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1},
    # The host CPU split into 8 devices: rehearses a real (data, fsdp, tensor) mesh without accelerators.
    # Pick the split with e.g. --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2.
    "cpu_8dev": {"runtime.num_cpu_devices": 8, "mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1},
}
