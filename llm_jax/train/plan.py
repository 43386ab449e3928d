"""`llm-jax plan`: will a job fit on its target, and how fast could it go? A dry run on this machine's CPU.

The real train step is compiled ahead of time for the target's device count on as many fake CPU devices. The
state and the batch are abstract (shapes and shardings only), so nothing of the model's size is allocated. The
compiled program gives each device's memory (XLA's buffer assignment), the matmuls it runs and the collectives
between devices; the hardware table (monitor/hardware.py) turns those into a step-time estimate.

XLA's cost_analysis() counts a loop body once whatever its trip count (a model with scanned layers reports about
1/num_layers of the unrolled model's FLOPs), so matmul FLOPs, bytes and collectives are counted from the compiled
HLO text instead, each computation weighted by how often it runs.
"""

import dataclasses
import json
import math
import os
import pathlib
import re
import time
from collections import defaultdict
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from llm_jax.config.load import ConfigError, load_module
from llm_jax.config.validate import MESH_AXES, finalize, resolve_mesh, shards_of, validate
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.monitor.flops import flops_per_token
from llm_jax.monitor.hardware import GIB, Hardware, hardware, kind_for_preset
from llm_jax.parallel.sharding import batch_sharding, replicated
from llm_jax.train.guard import GuardOptions
from llm_jax.train.optimizer import make_optimizer
from llm_jax.train.setup import prepare
from llm_jax.train.state import StepOptions, TrainState, create_train_state
from llm_jax.train.step import train_step

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Target:
    """The hardware a job is for: how many devices, in how many processes (hosts) and TPU slices."""

    devices: int
    processes: int = 1
    slices: int = 0  # 0: no TPU slices named; DCN axes then span processes (one per GPU node)

    def granules(self, cfg: ml_collections.ConfigDict) -> int:
        """What the config's DCN axes span (as validate() counts them): slices, else processes; 1 without DCN."""
        uses_dcn = any(cfg.mesh[f"dcn_{a}"] != 1 for a in MESH_AXES)
        return (self.slices or self.processes) if uses_dcn else 1


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
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is already up (tests): plan on the devices it has
        pass
    cpus = jax.devices("cpu")
    if len(cpus) < n:
        raise ConfigError(f"planning for {n} devices needs {n} fake CPU devices but JAX already started with "
                          f"{len(cpus)}; run the plan in a fresh process (and without "
                          "--xla_force_host_platform_device_count in XLA_FLAGS)")
    return cpus[:n]


# ---- the compiled program's HLO text: computations, how often each runs, matmul FLOPs, bytes, collectives ----

_INSTR = re.compile(r"^\s*(ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9][0-9a-z]*|pred)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "iota"}


@dataclasses.dataclass
class _Instr:
    name: str
    op: str
    root: bool
    arrays: list  # [(dims, bytes per element)] of the result (several for a tuple)
    operands: list[str]
    args: str  # the text between the parentheses
    attrs: str  # the text after them

    @property
    def bytes(self) -> int:
        return sum(math.prod(d) * b for d, b in self.arrays)


def _parse_instr(line: str) -> _Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    root, name, shape, op, rest = m.groups()
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):  # the operand list ends at the matching parenthesis
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            end = i
            break
    arrays = [(tuple(int(x) for x in dims.split(",") if x), _BYTES.get(dt, 1 if dt[1] in "48" else 4))
              for dt, dims in _ARRAY.findall(shape)]
    return _Instr(name, op, bool(root), arrays, re.findall(r"%([\w.-]+)", rest[:end]), rest[:end], rest[end + 1:])


def parse_hlo(text: str) -> dict[str, list[_Instr]]:
    """Computations in the order printed (callees before callers), the entry computation last."""
    comps, current, entry = {}, None, None
    for line in text.splitlines():
        if line.endswith("{") and (line.startswith("%") or line.startswith("ENTRY")):
            name = line.removeprefix("ENTRY ").split()[0].lstrip("%")
            current, entry = comps.setdefault(name, []), name if line.startswith("ENTRY") else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (instr := _parse_instr(line)):
            current.append(instr)
    if entry is not None:
        comps[entry] = comps.pop(entry)  # last, whatever the printer did
    return comps


def run_counts(comps: dict[str, list[_Instr]]) -> tuple[dict[str, float], set[str]]:
    """How many times each computation runs per step (loop bodies times their trip count), and which are fused
    (their instructions live in registers and caches, not memory)."""
    counts, fused = defaultdict(float), set()
    counts[next(reversed(comps))] = 1.0
    for name in reversed(comps):  # callers before callees
        for instr in comps[name]:
            trips = _TRIPS.search(instr.attrs)
            trips = int(trips.group(1)) if trips else 1
            for key, callee in _CALLEE.findall(instr.attrs):
                times = {"body": trips, "condition": trips + 1}.get(key, 1) if instr.op == "while" else 1
                counts[callee] += counts[name] * times
                if instr.op == "fusion" or name in fused:
                    fused.add(callee)
            for callee in re.findall(r"%([\w.-]+)", instr.attrs.partition("branch_computations={")[2].split("}")[0]):
                counts[callee] += counts[name]
    return counts, fused


def _dot_flops(instr: _Instr, dims: dict[str, tuple]) -> float:
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
    lhs = dims.get(instr.operands[0], ())
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting and lhs else 1
    return 2.0 * math.prod(instr.arrays[0][0]) * k


def _fusion_bytes(instr: _Instr, body: list[_Instr], operand_bytes: list[int]) -> int:
    """Memory traffic of one fusion: an operand it reads only through slices counts as those slices, and an in-place
    dynamic-update-slice writes only its update (as for one layer's slot in the scanned weights or gradients)."""
    names = {i.name: i for i in body}
    index = {i.name: int(i.args) for i in body if i.op == "parameter"}
    reads = list(operand_bytes)
    for p, k in index.items():
        users = [u for u in body if p in u.operands]
        if k < len(reads) and users and all(u.op in ("dynamic-slice", "slice", "gather") and u.operands[0] == p
                                            for u in users):
            reads[k] = sum(u.bytes for u in users)
    root = next((i for i in body if i.root), None)
    if root is None:
        return sum(reads) + instr.bytes
    written = 0
    for out in [names[o] for o in root.operands if o in names] if root.op == "tuple" else [root]:
        if out.op == "dynamic-update-slice" and out.operands[0] in index and out.operands[1] in names:
            if index[out.operands[0]] < len(reads):
                reads[index[out.operands[0]]] = 0
            written += names[out.operands[1]].bytes
        else:
            written += out.bytes
    return sum(reads) + written


def _iota(dims: str, perm: str | None) -> np.ndarray:
    """XLA's iota device list `[dims]T(perm)`: 0..n-1 laid out as dims, transposed, flattened."""
    shape = [int(d) for d in dims.split(",")]
    ids = np.arange(math.prod(shape)).reshape(shape)
    return (ids.transpose([int(p) for p in perm.split(",")]) if perm else ids).ravel()


def replica_groups(attrs: str) -> list[list[int]] | None:
    """The device groups of a collective, from any of the forms XLA prints (None: not understood)."""
    if m := re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", attrs):
        groups = [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
        return groups or None
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs):
        return _iota(m.group(3), m.group(4)).reshape(int(m.group(1)), int(m.group(2))).tolist()
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
                      r"(?: \{([^}]*)\})?", attrs):
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        sizes = [int(s) for _, s in axes]
        ids = (_iota(m.group(2), m.group(3)) if m.group(2) else np.arange(math.prod(sizes))).reshape(sizes)
        names = [a for a, _ in axes]
        chosen = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(4) or "")] or list(range(len(names)))
        others = [i for i in range(len(names)) if i not in chosen]
        return ids.transpose(others + chosen).reshape(-1, math.prod(sizes[i] for i in chosen)).tolist()
    if m := re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", attrs):
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m.group(1))]
    return None


def group_axes(groups: list[list[int]], mesh_shape: dict[str, int]) -> tuple[str, ...]:
    """The mesh axes along which a collective's groups span; device i of the program is mesh position i."""
    names, shape = list(mesh_shape), tuple(mesh_shape.values())
    varying = set()
    for group in groups:
        coords = np.array(np.unravel_index(np.asarray(group) % math.prod(shape), shape))
        varying |= {names[a] for a in range(len(names)) if len(set(coords[a])) > 1}
    return tuple(a for a in names if a in varying)


@dataclasses.dataclass
class Collective:
    op: str
    axes: tuple[str, ...]  # the mesh axes it communicates over
    group: int  # devices per group
    in_hlo: int = 0  # instructions in the compiled program
    per_step: float = 0.0  # executions per step (loop trips counted)
    bytes: float = 0.0  # its result buffers, per device per step
    traffic: float = 0.0  # bytes one device sends per step with ring algorithms


def _traffic(op: str, nbytes: float, n: int) -> float:
    """Bytes one device sends for one collective whose per-device result is `nbytes`, over `n` devices."""
    if n <= 1:
        return 0.0
    return {"all-gather": nbytes * (n - 1) / n, "reduce-scatter": nbytes * (n - 1),
            "all-reduce": 2 * nbytes * (n - 1) / n, "all-to-all": nbytes * (n - 1) / n}.get(op, nbytes)


@dataclasses.dataclass
class StepCost:
    matmul_flops: float  # per device per step: the dots in the compiled program, loop trips counted
    bytes_accessed: float  # per device per step, fusion by fusion
    collectives: list[Collective]


def step_cost(text: str, mesh_shape: dict[str, int]) -> StepCost:
    comps = parse_hlo(text)
    counts, fused = run_counts(comps)
    flops, nbytes, found = 0.0, 0.0, {}
    for name, body in comps.items():
        n = counts.get(name, 0.0)
        dims = {i.name: i.arrays[0][0] for i in body if len(i.arrays) == 1}
        size = {i.name: i.bytes for i in body}
        for instr in body:
            op = instr.op.removesuffix("-start")
            if instr.op == "dot":
                flops += n * _dot_flops(instr, dims)
            if op in COLLECTIVES:
                groups = replica_groups(instr.attrs)
                axes = group_axes(groups, mesh_shape) if groups else ("?",)
                group = len(groups[0]) if groups else math.prod(mesh_shape.values())
                per_call = max(math.prod(d) * b for d, b in instr.arrays) if instr.op.endswith("-start") \
                    else instr.bytes
                c = found.setdefault((op, axes), Collective(op, axes, group))
                c.in_hlo, c.per_step, c.bytes = c.in_hlo + 1, c.per_step + n, c.bytes + n * per_call
                c.traffic += n * _traffic(op, per_call, 2 if op == "collective-permute" else group)
                continue
            if name in fused or instr.op in _FREE or instr.op.endswith("-done"):
                continue
            operands = [size.get(o, 0) for o in instr.operands]
            if instr.op == "fusion":
                callee = re.search(r"calls=%([\w.-]+)", instr.attrs)
                nbytes += n * _fusion_bytes(instr, comps.get(callee.group(1), []) if callee else [], operands)
            elif instr.op == "dynamic-slice":
                nbytes += n * 2 * instr.bytes
            elif instr.op == "dynamic-update-slice" and len(operands) > 1:
                nbytes += n * 2 * operands[1]
            else:
                nbytes += n * (instr.bytes + sum(operands))
    return StepCost(flops, nbytes, sorted(found.values(), key=lambda c: (COLLECTIVES.index(c.op), c.axes)))


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
    cfg = finalize(cfg, make_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path).vocab_size)
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

    def bytes_per_device(self, tree) -> int:
        """Exact: each leaf's shard shape x dtype size, under its sharding."""
        return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def abstract_step(cfg: ml_collections.ConfigDict, target: Target, devices: list) -> AbstractStep:
    """The target's config, mesh, state and batch on `devices` (len == target.devices); nothing is allocated."""
    if len(devices) != target.devices:
        raise ValueError(f"a plan for {target.devices} devices got {len(devices)}")
    cfg, ici, dcn = _plain_mesh_config(cfg, target)
    cfg, mesh, model, _, params_sh = prepare(cfg, devices, check_data=False)
    t = cfg.train
    tx, schedule = make_optimizer(cfg.optimizer, t.steps)  # as build_run() makes them
    guard = GuardOptions(skip_nonfinite=t.nan_policy == "skip", spike_k=t.spike_k, window=t.spike_window)
    options = StepOptions(z_loss=t.z_loss, grad_accum=t.grad_accum, schedule=schedule, guard=guard)
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    shardings = {}

    def build():  # the real state creation, traced by eval_shape (nothing allocated); shardings come out here
        state, shardings["state"] = create_train_state(model, tx, options, t.seed, t.seq_len, mesh, rules, params_sh)
        return state

    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(build),
                         shardings["state"])
    row = jax.ShapeDtypeStruct((t.global_batch, t.seq_len + 1), jnp.int32, sharding=batch_sharding(mesh, rules))
    return AbstractStep(cfg, mesh, rules, state, {"tokens": row, "segment_ids": row, "positions": row}, ici, dcn)


# The program is never run: LLVM's optimisations only cost time (half the compile; HLO, memory and costs unchanged).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def plan(cfg: ml_collections.ConfigDict, target: Target, hw: Hardware, devices: list) -> Plan:
    """Compile the real train step for `target` on `devices` (fake CPU devices will do) and read the plan off it."""
    a = abstract_step(cfg, target, devices)
    shardings = jax.tree.map(lambda x: x.sharding, (a.state, a.batch["tokens"]))
    start = time.perf_counter()
    with jax.set_mesh(a.mesh), nn.logical_axis_rules(a.rules):  # as the loop runs it
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
                flops_per_token(a.cfg.model, t.seq_len) * t.global_batch * t.seq_len / target.devices,
                float(xla.get("flops", 0.0)), step_cost(compiled.as_text(), dict(a.mesh.shape)), compile_s)


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
    tries = ["more fsdp (--config.mesh.fsdp, or more devices)"]
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
        "collectives per device per step (ring algorithms; XLA:CPU leaves FSDP's gradient reduce-scatter an "
        "all-reduce)",
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
    for line in report(result, (note,) if note else ()):
        print_fn(line)
    print_fn(json.dumps(summary(result)))
    return result
