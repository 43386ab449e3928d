"""What a compiled XLA program does, read from its HLO text: matmul FLOPs, bytes moved and collectives (by mesh
axis), each computation weighted by how often it runs.

XLA's cost_analysis() counts a loop body once whatever its trip count (a model with scanned layers reports about
1/num_layers of the unrolled model's FLOPs); here a while loop's body counts `known_trip_count` times.
"""

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


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
