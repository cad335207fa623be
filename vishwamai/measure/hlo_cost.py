"""Per-computation costs of a compiled HLO module and the whole step they add up to.

Over `measure.hlo`'s call graph: the FLOPs of the instructions XLA's cost model counts (dots and
convolutions with their padding taps left out, elementwise arithmetic one per element,
reductions one per reduced element), the bytes a non-fused instruction reads and writes, each
collective's result bytes, and the TPU compiler's `estimated_cycles` (in each instruction's
backend config), each multiplied by the number of times one step runs its computation.
"""
from __future__ import annotations

import re

import numpy as np

from vishwamai.measure.hlo import (COLLECTIVE_KINDS, Instr, SHAPE_RE, callees, dims_of,
                                   elements, multiplicities, parse_module, shape_bytes)

_TARGET_RE = re.compile(r'custom_call_target="([^"]*)"')
#: Counted by XLA's cost model as one FLOP per output element.
ELEMENTWISE = frozenset((
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare",
    "select", "clamp", "and", "or", "xor", "not", "sign", "floor", "ceil", "round-nearest-afz",
    "round-nearest-even", "remainder", "power", "atan2", "shift-left", "shift-right-logical",
    "shift-right-arithmetic", "is-finite", "convert", "real", "imag", "popcnt", "clz",
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "sqrt",
    "rsqrt", "cbrt", "sine", "cosine", "tan", "erf"))
#: Instructions that move no data of their own (views, tuples, control).
NO_TRAFFIC = frozenset((
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
    "conditional", "after-all", "partition-id", "replica-id", "add-dependency", "opt-barrier",
    "optimization-barrier", "domain"))
#: The half of an async pair that is not counted (its `-start` is).
_DONE = re.compile(r"-(done|update)$")



def instr_flops(ins: Instr, shapes: dict) -> float:
    """FLOPs XLA's cost model gives one instruction (not counting called computations)."""
    out = sum(elements(d) for _, d in SHAPE_RE.findall(ins.shape)) if not \
        ins.shape.startswith("(") else elements(SHAPE_RE.findall(ins.shape)[0][1]) if \
        SHAPE_RE.findall(ins.shape) else 0
    if ins.op == "dot":
        lhs = dims_of(shapes.get(ins.operands[0], ""))
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        k = int(np.prod([lhs[int(i)] for i in m.group(1).split(",") if i])) if m and lhs \
            else 1
        return 2.0 * out * k
    if ins.op == "convolution":
        return _conv_flops(ins, shapes)
    if ins.op in ELEMENTWISE:
        return float(out)
    if ins.op in ("reduce", "reduce-window"):
        half = max(len(ins.operands) // 2, 1)
        inp = sum(elements(SHAPE_RE.findall(shapes.get(o, ""))[0][1])
                  for o in ins.operands[:half] if SHAPE_RE.findall(shapes.get(o, "")))
        return float(max(inp - out * half, 0))
    return 0.0


def _conv_flops(ins: Instr, shapes: dict) -> float:
    """2 x (valid input-kernel tap pairs) x batch x output features x input features per
    group, as XLA's cost model counts a convolution (padding taps are not counted). XLA:TPU
    writes many batched matmuls as padded convolutions."""
    m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
    lhs = dims_of(shapes.get(ins.operands[0], ""))
    rhs = dims_of(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
    out = dims_of(ins.shape)
    if not m or not lhs or not rhs or not out:
        return 0.0
    ll, rl, ol = m.groups()
    win = re.search(r"window=\{([^}]*)\}", ins.attrs)
    fields = dict(f.split("=", 1) for f in win.group(1).split()) if win else {}
    nsp = sum(ch.isdigit() for ch in ol)

    def field(name, default):
        v = fields.get(name)
        return [x for x in v.split("x")] if v else [default] * nsp

    size, pad = field("size", "1"), field("pad", "0_0")
    stride, rdil, ldil = field("stride", "1"), field("rhs_dilate", "1"), field("lhs_dilate", "1")
    taps = 1
    for d in range(nsp):
        n_in, n_out, k = lhs[ll.index(str(d))], out[ol.index(str(d))], int(size[d])
        lo = int(pad[d].split("_")[0])
        s, rd, ld = int(stride[d]), int(rdil[d]), int(ldil[d])
        o = np.arange(n_out)[:, None]
        pos = o * s + np.arange(k)[None, :] * rd - lo
        ok = (pos >= 0) & (pos <= (n_in - 1) * ld) & (pos % ld == 0)
        taps *= int(ok.sum())
    return 2.0 * taps * out[ol.index("b")] * out[ol.index("f")] * rhs[rl.index("i")]


def _fusion_traffic(ins: Instr, comps: dict, shapes: dict) -> float:
    """Bytes a fusion reads and writes: an operand the fused computation only slices is read
    as its slices; a dynamic-update-slice root writes (and reads) only its update."""
    inner = comps.get(callees(ins)[0][0]) if callees(ins) else None
    if inner is None:
        return shape_bytes(ins.shape) + sum(shape_bytes(shapes.get(o, "")) for o in ins.operands)
    params = {int(re.match(r"\d+", i.operands[0]).group(0)): i.name
              for i in inner.instrs if i.op == "parameter"}
    users: dict = {}
    for i in inner.instrs:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    named = inner.by_name()
    root = next((i for i in inner.instrs if i.root), None)
    outs = [named.get(o) for o in root.operands] if root is not None and root.op == "tuple" \
        else [root]
    in_place, written = set(), 0.0
    for o in outs:
        if o is not None and o.op == "dynamic-update-slice" and o.operands[0] in users:
            in_place.add(o.operands[0])
            written += shape_bytes(named[o.operands[1]].shape) if o.operands[1] in named else 0
        elif o is not None:
            written += shape_bytes(o.shape)
    read = 0.0
    for k, arg in enumerate(ins.operands):
        p = params.get(k)
        us = users.get(p, [])
        if p in in_place:
            continue
        if us and all(u.op in ("dynamic-slice", "slice", "gather") and u.operands[0] == p
                      for u in us):
            read += sum(shape_bytes(u.shape) for u in us)
        else:
            read += shape_bytes(shapes.get(arg, ""))
    return read + written


def instr_bytes(ins: Instr, comps: dict, shapes: dict) -> float:
    """Bytes one non-fused instruction reads and writes (XLA's 'bytes accessed' measure)."""
    if ins.op in NO_TRAFFIC or _DONE.search(ins.op):
        return 0.0
    if ins.op == "fusion":
        return _fusion_traffic(ins, comps, shapes)
    if ins.op in ("dynamic-slice", "slice"):
        return 2 * shape_bytes(ins.shape)
    if ins.op == "dynamic-update-slice":
        return 2 * shape_bytes(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else 0
    return shape_bytes(ins.shape) + sum(shape_bytes(shapes.get(o, "")) for o in ins.operands)


def _async_echo(c) -> bool:
    """True for XLA:TPU's copies of an async collective: it writes one collective into a start
    fusion (root `custom-call` AsyncCollectiveStart), continuation fusions
    (`async_collective_fusion*`) and a done fusion (root AsyncCollectiveDone), each holding the
    collective instruction; only the start (or a plain collective) is counted."""
    if c.name.startswith("async_collective_fusion"):
        return True
    root = next((i for i in c.instrs if i.root), None)
    t = _TARGET_RE.search(root.attrs) if root is not None and root.op == "custom-call" else None
    return bool(t) and t.group(1) == "AsyncCollectiveDone"


def per_computation(comps: dict) -> dict:
    """`{computation: {'flops', 'bytes', 'cycles', 'fused', 'collectives', 'cycles_by'}}`.

    'bytes' and 'cycles' count only the instructions of computations that are not fused
    (a fusion's own traffic and cycles stand for its fused body); 'cycles_by' splits cycles
    into 'collective' (collectives and the fusions that hold one), 'copy' and 'compute'.
    """
    fused = set()
    holds_collective = set()
    for c in comps.values():
        for ins in c.instrs:
            if ins.op == "fusion" or ins.op.endswith("-start") and ins.op != "async-start":
                fused.update(n for n, r in callees(ins) if r == "call")
            if ins.collective:
                holds_collective.add(c.name)
    out = {}
    for c in comps.values():
        shapes = {i.name: i.shape for i in c.instrs}
        row = {"flops": 0.0, "bytes": 0.0, "cycles": 0.0, "fused": c.name in fused,
               "collectives": {}, "cycles_by": {"compute": 0.0, "collective": 0.0,
                                                "copy": 0.0}}
        echo = _async_echo(c)
        for ins in c.instrs:
            row["flops"] += instr_flops(ins, shapes)
            kind = ins.collective
            if kind and not echo:
                e = row["collectives"].setdefault(kind, {"count": 0, "bytes": 0.0})
                e["count"] += 1
                e["bytes"] += shape_bytes(ins.shape)
            if c.name in fused:
                continue
            row["bytes"] += instr_bytes(ins, comps, shapes)
            cyc = ins.cycles
            if cyc:
                row["cycles"] += cyc
                inner = {n for n, _ in callees(ins)}
                what = ("collective" if kind or _DONE.search(ins.op) or inner & holds_collective
                        else "copy" if ins.op.startswith("copy") else "compute")
                row["cycles_by"][what] += cyc
        out[c.name] = row
    return out


def whole_step(text: str) -> dict:
    """Whole-step figures of one compiled HLO module, `while` trip counts applied.

    Returns:
      dict: flops, bytes, cycles ({'total', 'compute', 'collective', 'copy'}), collectives
      ({kind: {'count', 'bytes'}}) with every loop iteration counted; the same with each loop
      counted once under 'once' (the convention of `cost_analysis()`); loops (each `while`:
      name, body, trip_count, times) and 'unread_trip_counts' (loops counted once because
      their count could not be read).
    """
    comps, entry = parse_module(text)
    per = per_computation(comps)

    def total(mult):
        agg = {"flops": 0.0, "bytes": 0.0,
               "cycles": {"total": 0.0, "compute": 0.0, "collective": 0.0, "copy": 0.0},
               "collectives": {k: {"count": 0, "bytes": 0.0} for k in COLLECTIVE_KINDS}}
        for name, row in per.items():
            m = mult.get(name, 0)
            if not m:
                continue
            agg["flops"] += m * row["flops"]
            agg["bytes"] += m * row["bytes"]
            agg["cycles"]["total"] += m * row["cycles"]
            for k, v in row["cycles_by"].items():
                agg["cycles"][k] += m * v
            for k, v in row["collectives"].items():
                agg["collectives"][k]["count"] += m * v["count"]
                agg["collectives"][k]["bytes"] += m * v["bytes"]
        return agg

    mult, loops = multiplicities(comps, entry)
    once, _ = multiplicities(comps, entry, trips=False)
    out = total(mult)
    out["once"] = total(once)
    out["loops"] = loops
    out["unread_trip_counts"] = sum(lp["trip_count"] is None for lp in loops)
    return out


def step_figures(text: str, ca: dict | None = None) -> dict:
    """Whole-step FLOPs, bytes accessed, collectives and estimated cycles of one compiled
    program (per device), every `while` iteration counted.

    flops: `cost_analysis()`'s FLOPs (each loop body once) plus each loop's further
      iterations at the HLO's count of its body (`instr_flops`; on the programs tested it
      reproduces `cost_analysis()` within 0.3%). Without `ca`, the HLO's own count.
    bytes_accessed: `cost_analysis()`'s bytes plus the further iterations' HLO traffic
      (`instr_bytes`) scaled by the program's ratio of the compiler's bytes to the HLO's, once
      each (XLA:TPU's byte convention is not reproduced instruction by instruction, so this is
      an estimate: the loop bodies are assumed to have the program's ratio).
    collectives: `{kind: {'count', 'bytes'}}`, each collective instruction times the runs of
      its computation, XLA:TPU's async collectives once (at their start: `_async_echo`);
      bytes are the result's on one device.
    cycles: `{'total', 'compute', 'collective', 'copy'}` estimated cycles (0 off TPU).
    loops: each `while` with its trip count; unread_trip_counts: loops counted once.
    """
    w = whole_step(text)
    ca = ca or {}
    once = w["once"]
    flops, nbytes = w["flops"], w["bytes"]
    if "flops" in ca:
        flops = float(ca["flops"]) + (w["flops"] - once["flops"])
    if "bytes accessed" in ca:
        ratio = float(ca["bytes accessed"]) / once["bytes"] if once["bytes"] else 1.0
        nbytes = float(ca["bytes accessed"]) + ratio * (w["bytes"] - once["bytes"])
    return {"flops": flops, "bytes_accessed": nbytes,
            "collectives": {k: {"count": int(v["count"]), "bytes": int(v["bytes"])}
                            for k, v in w["collectives"].items()},
            "cycles": w["cycles"], "hlo_flops_once": once["flops"],
            "loops": [{k: lp[k] for k in ("name", "body", "trip_count", "times")}
                      for lp in w["loops"]],
            "unread_trip_counts": w["unread_trip_counts"]}
