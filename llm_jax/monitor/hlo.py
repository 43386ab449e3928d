"""What a compiled XLA program does, read from its HLO text: matmul FLOPs, bytes moved and collectives (by mesh
axis), each computation weighted by how often it runs.

XLA's cost_analysis() counts a loop body once whatever its trip count (a model with scanned layers reports about
1/num_layers of the unrolled model's FLOPs); here a while loop's body counts `known_trip_count` times.

The program is compiled for fake CPU devices, whose compiler differs from a GPU's or TPU's in two ways that matter
for the collectives, both undone here: XLA:CPU widens a bf16 collective to f32 (a bf16 value converted to f32
just before it is counted at its bf16 size), and it leaves FSDP's gradient reduce-scatter an all-reduce followed
by each device slicing out its shard (counted as the reduce-scatter that the accelerator compilers make of it).
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
_LAYOUT = {"bitcast", "reshape", "copy", "transpose"}  # ops that move a value without changing its precision
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


def _branches(instr: _Instr) -> list[str]:
    """The computations a conditional runs (one per branch)."""
    return re.findall(r"%([\w.-]+)", instr.attrs.partition("branch_computations={")[2].split("}")[0])


def _fused_body(instr: _Instr, comps: dict[str, list[_Instr]]) -> list[_Instr] | None:
    """The computation a fusion runs (None: not a fusion, or its body is not in the program text)."""
    callee = re.search(r"calls=%([\w.-]+)", instr.attrs) if instr.op == "fusion" else None
    return comps.get(callee.group(1)) if callee else None


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
            for callee in _branches(instr):
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


def _narrow_bytes(instr: _Instr | None, names: dict[str, _Instr], comps: dict[str, list[_Instr]]) -> int:
    """Bytes per element a collective's operand really carries: 2 when it is a 2-byte value (bf16, f16) that XLA:CPU
    widened to 4 just before the collective, else its own size."""
    def source(i: _Instr | None, scope: dict[str, _Instr]) -> _Instr | None:
        while i is not None and i.op in _LAYOUT and i.operands:
            i = scope.get(i.operands[0])
        return i

    own = instr.arrays[0][1] if instr is not None and len(instr.arrays) == 1 else 4
    if instr is not None and (body := _fused_body(instr, comps)) is not None:
        scope = {i.name: i for i in body}
        root = source(next((i for i in body if i.root), None), scope)
    else:
        scope, root = names, source(instr, names)
    if root is None or root.op != "convert" or own != 4 or not root.operands:
        return own
    inner = source(scope.get(root.operands[0]), scope)
    return 2 if inner is not None and len(inner.arrays) == 1 and inner.arrays[0][1] == 2 else own


_PASS = (_LAYOUT - {"transpose"}) | {"convert"}  # ops a value passes through on its way to the slice it is cut to


def _narrowed(name: str, users: dict[str, list[_Instr]], comps: dict[str, list[_Instr]]) -> bool:
    """Every reader of value `name` converts it, whole, to a 2-byte type first: XLA:CPU runs a matmul with a bf16
    output in f32 and narrows after the collective, so on the target the collective carried bf16. (A gradient
    reduced in f32 is sliced to its shard before it is narrowed, and does not count.)"""
    def narrows(reader: _Instr, value: str, scope: dict[str, list[_Instr]]) -> bool:
        if reader.op == "convert":
            return reader.arrays[0][1] == 2
        if reader.op == "bitcast":
            after = scope.get(reader.name, [])
            return bool(after) and all(narrows(r, reader.name, scope) for r in after)
        if (body := _fused_body(reader, comps)) is not None:
            inner = _users(body)
            params = [i for i in body if i.op == "parameter" and reader.operands[int(i.args)] == value]
            return bool(params) and all(inner.get(p.name) and all(narrows(r, p.name, inner) for r in inner[p.name])
                                        for p in params)
        return False

    readers = users.get(name, [])
    return bool(readers) and all(narrows(r, name, users) for r in readers)


def _users(body: list[_Instr]) -> dict[str, list[_Instr]]:
    users = defaultdict(list)
    for instr in body:
        for o in instr.operands:
            users[o].append(instr)
    return users


def _sliced_elements(name: str, users: dict[str, list[_Instr]], comps: dict[str, list[_Instr]]) -> int | None:
    """How many elements of value `name` are read, when every use of it reaches a slice through converts, copies and
    reshapes (inside fusions too); None when some use reads it whole."""
    readers, total = users.get(name, []), 0
    if not readers:
        return None
    for u in readers:
        if u.op in ("dynamic-slice", "slice") and u.operands[0] == name:
            n = math.prod(u.arrays[0][0])
        elif u.op in _PASS:
            n = _sliced_elements(u.name, users, comps)
        elif (body := _fused_body(u, comps)) is not None:
            inner, n = _users(body), 0
            for k, o in enumerate(u.operands):
                param = next((i for i in body if i.op == "parameter" and i.args == str(k)), None)
                if o != name or param is None:
                    continue
                part = _sliced_elements(param.name, inner, comps)
                if part is None and all(i.op in _PASS | {"parameter"} for i in body):
                    part = _sliced_elements(u.name, users, comps)  # the fusion only converts it: follow its result
                if part is None:
                    return None
                n += part
        else:
            return None
        if n is None:
            return None
        total += n
    return total


def _scattered(instr: _Instr, users: dict[str, list[_Instr]], comps: dict[str, list[_Instr]], n: int) -> bool:
    """An all-reduce whose every result is read only through slices of at most 1/n of it: a reduce-scatter."""
    results = [(instr.name, instr.arrays[0][0])] if len(instr.arrays) == 1 else \
        [(u.name, u.arrays[0][0]) for u in users.get(instr.name, []) if u.op == "get-tuple-element"]
    if n <= 1 or not results:
        return False
    for name, dims in results:
        read = _sliced_elements(name, users, comps)
        if read is None or read * n > math.prod(dims) * 1.01:
            return False
    return True


def _in_scope(instr: _Instr, scopes: tuple[str, ...]) -> bool:
    return any(f"/{scope}/" in instr.attrs for scope in scopes)


def _called_from(comps: dict[str, list[_Instr]], scopes: tuple[str, ...]) -> set[str]:
    """Computations run from inside one of the name scopes (loop bodies, branches, fusions of its ops): their own
    instructions often carry no name (the compiler's fusions), only the loop or branch that calls them."""
    inside: set[str] = set()
    if not scopes:
        return inside
    for name in reversed(comps):  # callers before callees
        for instr in comps[name]:
            if name in inside or _in_scope(instr, scopes):
                inside.update(callee for _, callee in _CALLEE.findall(instr.attrs))
                inside.update(_branches(instr))
    return inside


@dataclasses.dataclass
class StepCost:
    matmul_flops: float  # per device per step: the dots in the compiled program, loop trips counted
    bytes_accessed: float  # per device per step, fusion by fusion
    collectives: list[Collective]


def step_cost(text: str, mesh_shape: dict[str, int], on_chip: tuple[str, ...] = ()) -> StepCost:
    """`on_chip`: name scopes whose operations keep their data in on-chip memory on the target (a fused attention
    kernel's blocks): their FLOPs count, their memory traffic does not."""
    comps = parse_hlo(text)
    counts, fused = run_counts(comps)
    inside = _called_from(comps, on_chip)
    flops, nbytes, found = 0.0, 0.0, {}
    for name, body in comps.items():
        n = counts.get(name, 0.0)
        dims = {i.name: i.arrays[0][0] for i in body if len(i.arrays) == 1}
        size = {i.name: i.bytes for i in body}
        names, users = {i.name: i for i in body}, _users(body)
        for instr in body:
            op = instr.op.removesuffix("-start")
            if instr.op == "dot":
                flops += n * _dot_flops(instr, dims)
            if op in COLLECTIVES:
                groups = replica_groups(instr.attrs)
                axes = group_axes(groups, mesh_shape) if groups else ("?",)
                group = len(groups[0]) if groups else math.prod(mesh_shape.values())
                arrays = [max(instr.arrays, key=lambda a: math.prod(a[0]) * a[1])] if instr.op.endswith("-start") \
                    else instr.arrays
                if len(arrays) == len(instr.operands):  # one result per operand: each at the precision it carries
                    arrays = [(d, min(b, _narrow_bytes(names.get(o), names, comps)))
                              for (d, b), o in zip(arrays, instr.operands, strict=True)]
                    results = {0: instr.name} if len(arrays) == 1 else \
                        {int(re.search(r"index=(\d+)", u.attrs).group(1)): u.name
                         for u in users.get(instr.name, []) if u.op == "get-tuple-element"}
                    arrays = [(d, 2 if b == 4 and k in results and _narrowed(results[k], users, comps) else b)
                              for k, (d, b) in enumerate(arrays)]
                per_call = sum(math.prod(d) * b for d, b in arrays)
                if op == "all-reduce" and _scattered(instr, users, comps, group):
                    op, per_call = "reduce-scatter", per_call / group
                c = found.setdefault((op, axes), Collective(op, axes, group))
                c.in_hlo, c.per_step, c.bytes = c.in_hlo + 1, c.per_step + n, c.bytes + n * per_call
                c.traffic += n * _traffic(op, per_call, 2 if op == "collective-permute" else group)
                continue
            if name in fused or instr.op in _FREE or instr.op.endswith("-done"):
                continue
            if name in inside or _in_scope(instr, on_chip):
                continue
            operands = [size.get(o, 0) for o in instr.operands]
            if instr.op == "fusion":
                nbytes += n * _fusion_bytes(instr, _fused_body(instr, comps) or [], operands)
            elif instr.op == "dynamic-slice":
                nbytes += n * 2 * instr.bytes
            elif instr.op == "dynamic-update-slice" and len(operands) > 1:
                nbytes += n * 2 * operands[1]
            else:
                nbytes += n * (instr.bytes + sum(operands))
    return StepCost(flops, nbytes, sorted(found.values(), key=lambda c: (COLLECTIVES.index(c.op), c.axes)))
