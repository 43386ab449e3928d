"""Process-level set-up that must happen before JAX starts its backends."""

import jax
import ml_collections

from llm_jax.config.load import ConfigError


def init_runtime(cfg: ml_collections.ConfigDict) -> None:
    """Split the host CPU into `runtime.num_cpu_devices` devices (8 fake devices rehearse a real mesh)."""
    n = cfg.runtime.num_cpu_devices
    if n <= 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        # The backend is already up (tests set the device count before JAX starts): fine if it agrees.
        have = len(jax.devices("cpu"))
        if have != n:
            raise ConfigError(f"runtime.num_cpu_devices={n} but JAX already started with {have} CPU devices; "
                              "set it before the first JAX call, or leave it at 0") from None
