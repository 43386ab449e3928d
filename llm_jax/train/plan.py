"""`llm-jax plan`: will a job fit on its target, and how fast could it go? A dry run on this machine's CPU.

The real train step is compiled ahead of time for the target's device count on as many fake CPU devices. The
state and the batch are abstract (shapes and shardings only), so nothing of the model's size is allocated. The
compiled program gives each device's memory (XLA's buffer assignment), the matmuls it runs and the collectives
between devices; the hardware table (monitor/hardware.py) turns those into a step-time estimate.

XLA's cost_analysis() counts a loop body once whatever its trip count (a model with scanned layers reports about
1/num_layers of the unrolled model's FLOPs), so matmul FLOPs, bytes and collectives are counted from the compiled
HLO text instead (monitor/hlo.py), each computation weighted by how often it runs.
"""

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh

from llm_jax.config.load import ConfigError, load_module
from llm_jax.config.validate import MESH_AXES, finalize, resolve_mesh, shards_of, uses_dcn, validate
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.models.attention import FUSED, KERNEL_PLATFORM, resolve
from llm_jax.models.chunked import KERNEL_SCOPE
from llm_jax.models.layout import on_mesh
from llm_jax.monitor.flops import flops_per_token
from llm_jax.monitor.hardware import GIB, Hardware, hardware, kind_for_preset
from llm_jax.monitor.hlo import Collective, StepCost, step_cost
from llm_jax.objectives import extra_tokens
from llm_jax.parallel.sharding import batch_sharding, replicated
from llm_jax.train.setup import optimizer_and_options, prepare
from llm_jax.train.state import TrainState, create_train_state
from llm_jax.train.step import train_step


@dataclasses.dataclass(frozen=True)
class Target:
    """The hardware a job is for: how many devices, in how many processes (hosts) and TPU slices."""

    devices: int
    processes: int = 1
    slices: int = 0  # 0: no TPU slices named; DCN axes then span processes (one per GPU node)

    def granules(self, cfg: ml_collections.ConfigDict) -> int:
        """What the config's DCN axes span (as validate() counts them): slices, else processes; 1 without DCN."""
        return (self.slices or self.processes) if uses_dcn(cfg.mesh) else 1


def target_for(cfg: ml_collections.ConfigDict, topologies_file: pathlib.Path, devices: int | None = None,
               processes: int | None = None, slices: int | None = None) -> Target:
    """The topology preset's `devices`/`processes`/`slices`, with the given ones overriding them."""
    preset = {}
    if topologies_file.is_file():
        preset = load_module(topologies_file, "topology preset file").PRESETS.get(cfg.topology_preset, {})
    devices = devices or preset.get("devices")
    if not devices:
        raise ConfigError(f"the topology preset '{cfg.topology_preset}' names no target device count; "
                          "pass --devices=N")
    return Target(devices, processes or preset.get("processes", 1), preset.get("slices", 0) if slices is None
                  else slices)


def use_fake_devices(n: int) -> list:
    """`n` CPU devices to compile for, whatever this machine has; must run before JAX starts its backend."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
        jax.config.update("jax_platforms", "cpu")
        # A count forced in XLA_FLAGS (the tests' 8) is kept: overriding it would shrink every later mesh.
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is already up (tests): plan on the devices it has
        pass
    cpus = jax.devices("cpu")
    if len(cpus) < n:
        raise ConfigError(f"planning for {n} devices needs {n} fake CPU devices but JAX already started with "
                          f"{len(cpus)}; run the plan in a fresh process (and without "
                          "--xla_force_host_platform_device_count in XLA_FLAGS)")
    return cpus[:n]


# ---- the plan: compile the real step for the target, then read memory, FLOPs and collectives off it ----


@dataclasses.dataclass
class Plan:
    cfg: ml_collections.ConfigDict  # finalized, on the plain mesh it was compiled for
    target: Target
    hw: Hardware
    ici: dict[str, int]  # mesh axis -> size inside a node / slice
    dcn: dict[str, int]  # mesh axis -> size across nodes / slices
    num_params: int
    param_bytes: int  # per device, exact
    opt_bytes: int  # per device, exact
    other_bytes: int  # per device: batch, step counter, guard, metrics
    temp_bytes: int  # per device: activations and temporaries (XLA's buffer assignment)
    model_flops: float  # per device per step: 6N + attention (monitor/flops.py)
    xla_flops: float  # per device: cost_analysis(), each loop body counted once
    cost: StepCost
    compile_s: float
    fused_attention: str | None = None  # the target's fused kernel, planned with `chunked` in its place

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.opt_bytes + self.other_bytes + self.temp_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hw.hbm_gib * GIB

    def bandwidth(self, c: Collective) -> float:
        """Bytes/s for a collective: DCN's if any of its axes crosses slices / nodes."""
        return 1e9 * (self.hw.dcn_gbps if any(self.dcn.get(a, 1) > 1 for a in c.axes) else self.hw.ici_gbps)

    @property
    def times(self) -> dict[str, float]:
        peak = self.hw.peak_flops or math.nan
        return {"compute": (self.cost.matmul_flops or self.model_flops) / peak,
                "memory": self.cost.bytes_accessed / (self.hw.hbm_gbps * 1e9),
                "network": sum(c.traffic / self.bandwidth(c) for c in self.cost.collectives)}

    @property
    def step_s(self) -> float:
        """Perfect overlap of compute, memory traffic and collectives: the slowest of the three."""
        return max(self.times.values())

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_s * self.hw.peak_flops) if self.hw.peak_flops else math.nan


def _plain_mesh_config(cfg: ml_collections.ConfigDict, target: Target):
    """Validate for the target (with its processes and slices), then fold each DCN axis into its mesh axis: one
    process's fake devices cannot be laid out over slices, and per-device memory and FLOPs do not care."""
    tokenizer = make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    cfg = finalize(cfg, tokenizer.vocab_size + extra_tokens(cfg, tokenizer.specials))
    if cfg.train.per_device_batch:
        cfg.train.global_batch = cfg.train.per_device_batch * target.devices
    granules = target.granules(cfg)
    validate(cfg, target.devices, target.processes, granules)
    ici, dcn = resolve_mesh(cfg.mesh, target.devices, granules)
    for axis, i, d in zip(MESH_AXES, ici, dcn, strict=True):
        cfg.mesh[axis], cfg.mesh[f"dcn_{axis}"] = i * d, 1
    return cfg, dict(zip(MESH_AXES, ici, strict=True)), dict(zip(MESH_AXES, dcn, strict=True))


class AbstractStep(NamedTuple):
    """The train step's inputs for a target, as shapes with shardings: what `plan` compiles."""

    cfg: ml_collections.ConfigDict  # finalized, on the plain mesh
    mesh: Mesh
    rules: tuple
    state: TrainState  # of ShapeDtypeStructs with shardings
    batch: dict[str, jax.ShapeDtypeStruct]
    ici: dict[str, int]
    dcn: dict[str, int]
    target_len: int  # the decoder length of an encoder-decoder example (for its FLOPs), else 0

    def bytes_per_device(self, tree) -> int:
        """Exact: each leaf's shard shape x dtype size, under its sharding."""
        return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def abstract_step(cfg: ml_collections.ConfigDict, target: Target, devices: list) -> AbstractStep:
    """The target's config, mesh, state and batch on `devices` (len == target.devices); nothing is allocated."""
    if len(devices) != target.devices:
        raise ValueError(f"a plan for {target.devices} devices got {len(devices)}")
    cfg, ici, dcn = _plain_mesh_config(cfg, target)
    cfg, mesh, model, _, params_sh, objective = prepare(cfg, devices, check_data=False, fit_copies=0)
    t = cfg.train
    tx, options = optimizer_and_options(cfg, objective)  # as build_run() makes them
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    shardings = {}

    def build():  # the real state creation, traced by eval_shape (nothing allocated); shardings come out here
        state, shardings["state"] = create_train_state(model, tx, options, t.seed, objective.spec(), mesh, rules,
                                                       params_sh)
        return state

    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(build),
                         shardings["state"])
    batch = objective.spec().abstract(t.global_batch, batch_sharding(mesh, rules))
    return AbstractStep(cfg, mesh, rules, state, batch, ici, dcn, objective.target_len)


# The program is never run: LLVM's optimisations only cost time (half the compile; HLO, memory and costs unchanged).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def attention_stand_in(cfg: ml_collections.ConfigDict, hw: Hardware) -> str | None:
    """The fused kernel the target runs for `model.attention`, which CPUs cannot compile (None: not a fused one).
    The plan compiles `chunked` in its place, the same algorithm in plain JAX, and leaves its block-internal memory
    traffic out (the kernel keeps blocks in on-chip memory); its inputs and outputs are counted where they are
    made and used."""
    implementation = resolve(cfg.model, hw.platform, cfg.train.seq_len)
    if implementation not in FUSED:
        return None
    if KERNEL_PLATFORM[implementation] != hw.platform:
        auto = cfg.model.copy_and_resolve_references()
        auto.attention = "auto"
        raise ConfigError(f"model.attention={implementation} runs on {KERNEL_PLATFORM[implementation].upper()}s, "
                          f"but the target is {hw.name} ({hw.platform}); use model.attention=auto (for this "
                          f"target: {resolve(auto, hw.platform, cfg.train.seq_len)})")
    cfg.model.attention = "chunked"
    return implementation


def plan(cfg: ml_collections.ConfigDict, target: Target, hw: Hardware, devices: list) -> Plan:
    """Compile the real train step for `target` on `devices` (fake CPU devices will do) and read the plan off it."""
    cfg = cfg.copy_and_resolve_references()
    fused = attention_stand_in(cfg, hw)
    a = abstract_step(cfg, target, devices)
    shardings = jax.tree.map(lambda x: x.sharding, (a.state, a.batch))
    start = time.perf_counter()
    with on_mesh(a.mesh, a.rules):  # as the loop runs it
        step = jax.jit(train_step, in_shardings=shardings, out_shardings=(shardings[0], replicated(a.mesh)),
                       donate_argnums=0)
        compiled = step.lower(a.state, a.batch).compile(FAST_COMPILE)
    compile_s = time.perf_counter() - start

    mem, t = compiled.memory_analysis(), a.cfg.train
    param_bytes, opt_bytes = a.bytes_per_device(a.state.params), a.bytes_per_device(a.state.opt_state)
    in_out = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    xla = compiled.cost_analysis() or {}
    xla = xla[0] if isinstance(xla, list) else xla
    return Plan(a.cfg, target, hw, a.ici, a.dcn, sum(math.prod(p.shape) for p in jax.tree.leaves(a.state.params)),
                param_bytes, opt_bytes, max(0, in_out - param_bytes - opt_bytes), mem.temp_size_in_bytes,
                flops_per_token(a.cfg.model, t.seq_len, a.target_len) * t.global_batch * t.seq_len / target.devices,
                float(xla.get("flops", 0.0)),
                step_cost(compiled.as_text(), dict(a.mesh.shape), (KERNEL_SCOPE,) if fused else ()), compile_s,
                fused)


# ---- the report ----


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.2f} MiB"


def _si(x: float, unit: str) -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def verdict(p: Plan) -> str:
    need, have = p.total_bytes / GIB, p.hw.hbm_gib
    if p.fits:
        return f"fits: {need:.2f} GiB of {have:.4g} GiB per device ({need / have:.0%})"
    tries, L = [], p.cfg.train.seq_len
    # These two remove the largest temporaries (scores [B, H, L, S] and logits [B, L, V]) at no cost in FLOPs,
    # where the sequence is long enough to be cut into blocks.
    if resolve(p.cfg.model, p.hw.platform, L) == "xla" and 2 * p.cfg.model.attention_block_kv <= L:
        tries.append("blockwise attention (--config.model.attention=chunked, or =auto on a GPU/TPU target)")
    if not p.cfg.train.loss_chunk and L >= 256:
        tries.append(f"a chunked loss (--config.train.loss_chunk={min(512, L // 4)})")
    tries.append("more fsdp (--config.mesh.fsdp, or more devices)")
    if p.cfg.model.remat != "full":
        tries.append("remat=full (--config.model.remat=full)")
    tries.append("smaller per_device_batch (--config.train.per_device_batch; train.grad_accum keeps the batch)")
    return f"DOES NOT FIT: needs {need:.2f} GiB per device, the device has {have:.4g} GiB; try: " + ", ".join(tries)


def report(p: Plan, notes: tuple[str, ...] = ()) -> list[str]:
    m, t, hw, times = p.cfg.model, p.cfg.train, p.hw, p.times
    tokens, mesh_shape = t.global_batch * t.seq_len, tuple(p.ici[a] * p.dcn[a] for a in MESH_AXES)
    dcn = [f"{a} = {p.ici[a]} x {p.dcn[a]} {'slices' if p.target.slices else 'nodes'}" for a in MESH_AXES
           if p.dcn[a] > 1]
    rows = [("parameters", p.param_bytes, "exact: each shard's shape x dtype"),
            ("optimizer state", p.opt_bytes, "exact"), ("batch, step, metrics", p.other_bytes, ""),
            ("activations + temporaries", p.temp_bytes, "XLA:CPU's buffer assignment; GPU/TPU compilers fuse and "
             "schedule differently, so an estimate"),
            ("total", p.total_bytes, f"of {hw.hbm_gib:.4g} GiB ({p.total_bytes / (hw.hbm_gib * GIB):.0%})")]
    lines = [
        f"plan: model {p.cfg.model_preset or '(custom)'} ({_count(p.num_params)} parameters) on "
        f"{p.target.devices} x {hw.name}, {p.target.processes} process(es)"
        f"{f', {p.target.slices} slices' if p.target.slices else ''} (topology {p.cfg.topology_preset or '-'})",
        f"mesh {' '.join(f'{a}={n}' for a, n in zip(MESH_AXES, mesh_shape, strict=True))} "
        f"({'DCN: ' + ', '.join(dcn) if dcn else 'all ICI'}) | batch {t.global_batch} x {t.seq_len} tokens "
        f"({t.global_batch // shards_of(p.cfg, mesh_shape, 'batch')[0]} rows per batch shard, grad_accum "
        f"{t.grad_accum}) | remat {m.remat}, "
        f"{'scanned' if m.scan_layers else 'unrolled'} layers, {m.dtype} compute, {m.param_dtype} parameters",
        f"compiled the train step for {p.target.devices} fake CPU devices in {p.compile_s:.1f} s",
        *([f"attention: the target runs '{p.fused_attention}', planned with 'chunked' (the same algorithm in plain "
           "JAX) whose blocks' memory traffic, on-chip in the kernel, is left out"] if p.fused_attention else []),
        *(f"note: {n}" for n in notes),
        "",
        "memory per device",
        *(f"  {name:<27}{_size(n):>12}   {why}" for name, n, why in rows),
        "",
        "work per device per step",
        f"  {'model FLOPs':<27}{_si(p.model_flops, 'FLOP'):>12}   6N + attention, {tokens:,} tokens / "
        f"{p.target.devices} devices",
        f"  {'compiler matmul FLOPs':<27}{_si(p.cost.matmul_flops, 'FLOP'):>12}   the dots of the compiled step, "
        "loop trips counted (remat recomputation included)",
        f"  {'XLA cost_analysis FLOPs':<27}{_si(p.xla_flops, 'FLOP'):>12}   (it counts each loop body once)",
        f"  {'bytes accessed':<27}{_size(p.cost.bytes_accessed):>12}   fusion by fusion, loop trips counted",
        "",
        "collectives per device per step (ring algorithms, as the target's compiler makes them: bf16 ones counted "
        "at bf16, an all-reduce each device slices its shard of as a reduce-scatter)",
        f"  {'op':<20}{'over':<13}{'network':<8}{'in HLO':>7}{'per step':>10}{'result bytes':>14}{'time':>11}",
    ]
    for c in p.cost.collectives:
        net = "DCN" if any(p.dcn.get(a, 1) > 1 for a in c.axes) else "ICI"
        lines.append(f"  {c.op:<20}{','.join(c.axes) or '-':<13}{net:<8}{c.in_hlo:>7}{c.per_step:>10.0f}"
                     f"{_size(c.bytes):>14}{c.traffic / p.bandwidth(c) * 1e3:>8.1f} ms")
    if not p.cost.collectives:
        lines.append("  none")
    peak = _si(hw.peak_flops, "FLOP/s") + (" (timed on this CPU)" if hw.measured_peak else " (bf16 peak)")
    lines += [
        "",
        "step time estimate (compute, memory and network overlap perfectly: the slowest of the three)",
        f"  compute {times['compute'] * 1e3:10.1f} ms   compiler matmul FLOPs / {peak}",
        f"  memory  {times['memory'] * 1e3:10.1f} ms   bytes accessed / {hw.hbm_gbps:g} GB/s (XLA:CPU fuses less "
        "and widens bf16 around matmuls: an upper bound)",
        f"  network {times['network'] * 1e3:10.1f} ms   bytes sent / {hw.ici_gbps:g} GB/s ICI, {hw.dcn_gbps:g} GB/s "
        "DCN per device",
        f"  step    {p.step_s * 1e3:10.1f} ms   {max(times, key=times.get)}-bound: ~{tokens / p.step_s:,.0f} tokens/s, "
        f"MFU ~{p.mfu:.0%}",
        "",
        verdict(p),
    ]
    return lines


def summary(p: Plan) -> dict:
    """The numbers of a plan as one JSON-able dict (the last line `llm-jax plan` prints)."""
    return {
        "fits": p.fits, "total_gib": p.total_bytes / GIB, "hbm_gib": p.hw.hbm_gib,
        "params_gib": p.param_bytes / GIB, "opt_state_gib": p.opt_bytes / GIB, "temp_gib": p.temp_bytes / GIB,
        "devices": p.target.devices, "mesh": {a: p.ici[a] * p.dcn[a] for a in MESH_AXES},
        "num_params": p.num_params, "model_tflops": p.model_flops / 1e12,
        "matmul_tflops": p.cost.matmul_flops / 1e12, "xla_tflops": p.xla_flops / 1e12,
        "step_time_s": p.step_s, "mfu": p.mfu, "compile_s": p.compile_s,
        "collectives": {f"{c.op}@{','.join(c.axes)}": {"per_step": c.per_step, "gib": c.bytes / GIB}
                        for c in p.cost.collectives},
    }


def run(cfg: ml_collections.ConfigDict, config_file: str, devices: int | None = None, processes: int | None = None,
        slices: int | None = None, device_kind: str | None = None, hbm_gib: float | None = None,
        print_fn=print) -> Plan:
    """`llm-jax plan`: the target from the topology preset next to `config_file` (overridable), fake devices,
    the plan, its report and a JSON line. Call before anything starts JAX's backend."""
    target = target_for(cfg, pathlib.Path(config_file).parent / "topologies.py", devices, processes, slices)
    fake = use_fake_devices(target.devices)
    kind, note = (device_kind, "") if device_kind else kind_for_preset(cfg.topology_preset)
    if kind is None:
        raise ConfigError(f"cannot tell the device kind from topology '{cfg.topology_preset}'; pass --device-kind")
    hw = hardware(kind, target.devices, cfg.model.dtype)
    if hbm_gib:
        hw = dataclasses.replace(hw, hbm_gib=hbm_gib)
    result = plan(cfg, target, hw, fake)
    notes = [note] if note else []
    if cfg.train.seq_len < cfg.model.max_seq_len:
        notes.append(f"planned at train.seq_len={cfg.train.seq_len}, the model takes up to {cfg.model.max_seq_len} "
                     f"tokens: plan its full context with --config.train.seq_len={cfg.model.max_seq_len}")
    for line in report(result, tuple(notes)):
        print_fn(line)
    print_fn(json.dumps(summary(result)))
    return result
