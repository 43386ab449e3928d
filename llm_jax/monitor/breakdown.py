"""Where a step's time goes: the op events of a jax.profiler trace, summed by kind of work.

Each XLA op event in the trace (`args.hlo_op`) is classified from the compiled program's HLO: matmuls (a dot or
convolution, alone or fused with elementwise work), transposes and copies (layout changes, alone or as the output
of a fusion), collectives, and the rest (elementwise, reductions, gathers). Control-flow ops (while, call,
conditional) are left out: the ops inside them are events of their own.
"""

import collections
import gzip
import json
import pathlib
import re

from llm_jax.monitor.hlo import COLLECTIVES, parse_hlo

CATEGORIES = ("matmul", "transpose/copy", "collective", "elementwise/other")
_LAYOUT = {"copy", "transpose"}
_CONTROL = {"while", "call", "conditional"}


def classify_ops(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> category, for every instruction of the program (fusions by what they contain)."""
    comps = parse_hlo(hlo_text)

    def kind(instr, seen=()) -> str:
        op = instr.op.removesuffix("-start").removesuffix("-done")
        if op in COLLECTIVES:
            return "collective"
        if op in ("dot", "convolution"):
            return "matmul"
        if op in _LAYOUT:
            return "transpose/copy"
        if op == "fusion" or op == "custom-call":
            body = [i for callee in _callees(instr) if callee not in seen for i in comps.get(callee, [])]
            kinds = {kind(i, (*seen, *_callees(instr))) for i in body}
            if "matmul" in kinds:
                return "matmul"
            if body and _writes_transposed(body):
                return "transpose/copy"
            if "collective" in kinds:
                return "collective"
        return "elementwise/other"

    return {i.name: ("control" if i.op in _CONTROL else kind(i)) for body in comps.values() for i in body}


def _writes_transposed(body) -> bool:
    """A fusion whose output is a transpose or copy (through bitcasts): its cost is writing in another layout,
    whatever elementwise work is fused into it (e.g. an activation's gradient, transposed for a weight gradient)."""
    by_name = {i.name: i for i in body}
    node = next((i for i in body if i.root), None)
    while node is not None and node.op == "bitcast" and node.operands:
        node = by_name.get(node.operands[0])
    return node is not None and node.op in _LAYOUT


def _callees(instr) -> list[str]:
    return re.findall(r"\bcalls=%([\w.-]+)", instr.attrs)


def latest_trace(logdir: str | pathlib.Path) -> pathlib.Path:
    """The Chrome-format trace of the newest profile under `logdir` (jax.profiler writes one per start/stop)."""
    traces = sorted(pathlib.Path(logdir).glob("plugins/profile/*/*.trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {logdir}/plugins/profile")
    return traces[-1]


def op_times(trace_path: str | pathlib.Path, module_prefix: str) -> dict[str, float]:
    """HLO op name -> total seconds in the trace, over the modules whose name starts with `module_prefix`."""
    data = json.loads(gzip.decompress(pathlib.Path(trace_path).read_bytes()))
    totals: dict[str, float] = collections.defaultdict(float)
    for event in data.get("traceEvents", []):
        args = event.get("args") or {}
        if event.get("ph") == "X" and "hlo_op" in args and args.get("hlo_module", "").startswith(module_prefix):
            totals[args["hlo_op"]] += event.get("dur", 0.0) * 1e-6
    return dict(totals)


def breakdown(op_seconds: dict[str, float], categories: dict[str, str]) -> dict[str, float]:
    """Seconds per category (ops the HLO does not name count as elementwise/other; control flow is left out)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for op, seconds in op_seconds.items():
        category = categories.get(op, "elementwise/other")
        if category != "control":
            out[category] += seconds
    return out


def top_ops(op_seconds: dict[str, float], categories: dict[str, str], n: int = 8) -> list[tuple[str, str, float]]:
    ops = [(op, categories.get(op, "elementwise/other"), s) for op, s in op_seconds.items()
           if categories.get(op) != "control"]
    return sorted(ops, key=lambda x: -x[2])[:n]
