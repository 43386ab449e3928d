"""Process-level set-up that must happen before JAX starts its backends: XLA flags, CPU device count, and the
multi-process runtime (jax.distributed) for jobs over several hosts."""

import ipaddress
import os

import jax
import ml_collections

from llm_jax.config.load import ConfigError


def _add_flags(env_var: str, flags: str) -> None:
    if flags.strip():
        os.environ[env_var] = (os.environ.get(env_var, "") + " " + flags.strip()).strip()


def in_cluster() -> bool:
    """Whether this process was started as part of a multi-process job that jax.distributed can detect."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:  # a TPU VM pod slice with several hosts
        return True
    return bool(env.get("JOB_COMPLETION_INDEX") and env.get("KUBERNETES_SERVICE_HOST"))  # a k8s indexed job


def bind_address(coordinator: str, bind: str) -> str | None:
    """Where process 0's coordination service listens: `bind` if given; else the coordinator's own address when
    that is a loopback one (jax would listen on every interface, [::]:port, even for a local rehearsal); else None
    (jax's default, which also honours JAX_COORDINATOR_BIND_ADDRESS)."""
    if bind or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return bind or None
    host = coordinator.rsplit(":", 1)[0].strip("[]") if ":" in coordinator else ""
    if host == "localhost":
        return coordinator
    try:
        return coordinator if host and ipaddress.ip_address(host).is_loopback else None
    except ValueError:  # a host name: reachable from other machines, so jax's default
        return None


def init_distributed(r: ml_collections.ConfigDict) -> bool:
    """Start jax.distributed as `runtime.*` says; True when this is a multi-process job."""
    if r.distributed == "off" or (r.distributed == "auto" and not (r.coordinator_address or in_cluster())):
        return False
    kwargs = {"initialization_timeout": r.init_timeout_s, "heartbeat_timeout_seconds": r.heartbeat_timeout_s}
    if r.coordinator_address:
        kwargs["coordinator_address"] = r.coordinator_address
    if r.num_processes:
        kwargs["num_processes"] = r.num_processes
    if r.process_id >= 0:
        kwargs["process_id"] = r.process_id
    bind = bind_address(r.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
                        r.coordinator_bind_address)
    if bind:
        kwargs["coordinator_bind_address"] = bind
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"could not start the multi-process runtime ({e}); check runtime.coordinator_address, "
                          "runtime.num_processes and runtime.process_id, or set runtime.distributed=off") from None
    return True


def init_runtime(cfg: ml_collections.ConfigDict) -> None:
    """Flags, then jax.distributed, then (CPU) the device count: all before the first JAX computation."""
    r = cfg.runtime
    _add_flags("XLA_FLAGS", r.xla_flags)
    _add_flags("LIBTPU_INIT_ARGS", r.libtpu_init_args)
    if r.compilation_cache_dir:
        where = r.compilation_cache_dir
        jax.config.update("jax_compilation_cache_dir", where if "://" in where else os.path.expanduser(where))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(r.compilation_cache_min_compile_s))
    init_distributed(r)
    n = r.num_cpu_devices
    if n <= 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        # The backend is already up (tests set the device count before JAX starts): fine if it agrees.
        have = len(jax.local_devices(backend="cpu"))
        if have != n:
            raise ConfigError(f"runtime.num_cpu_devices={n} but JAX already started with {have} CPU devices; "
                              "set it before the first JAX call, or leave it at 0") from None
