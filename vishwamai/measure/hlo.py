"""A compiled HLO module read as a call graph, so its figures count every `while` iteration.

XLA's `cost_analysis()` counts a `while` body once, and a collective inside a scanned block
appears once in the HLO text however many layers run it. `parse_module` splits the compiled
text into computations and instructions; `multiplicities` walks the call graph from the entry
computation and gives each computation the number of times one step runs it: a `while` body
its trip count (times its caller's), the condition one more, a fusion, call, async or
conditional branch its caller's count (a conditional's branches are each counted as taken: an
upper bound), a reduction's `to_apply` region none (its work is the reducer's, counted there).

The trip count comes from the backend config's `known_trip_count` where the compiler wrote one
(the CPU backend does); XLA:TPU's compiled HLO has none, so it is read from the condition:
`compare(get-tuple-element(param, k), constant(N)), direction=LT` (or LE, GT, GE), with the
induction variable's start read from the `while` operand's element k (a constant; 0 if not).

`measure.hlo_cost` counts each computation's FLOPs, bytes, collectives and estimated cycles
over this graph.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s8": 1, "u8": 1,
               "pred": 1, "s64": 8, "u64": 8, "s16": 2, "u16": 2, "f8e4m3fn": 1, "f8e5m2": 1,
               "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1, "c64": 8,
               "c128": 16, "s4": 0.5, "u4": 0.5, "s2": 0.25, "u2": 0.25}
SHAPE_RE = re.compile(r"([a-z]\w*)\[([\d,]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_CALL_RE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)"
                      r"=%?([\w.\-]+)")
_CALL_LIST_RE = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_CYCLES_RE = re.compile(r'"estimated_cycles":"?(\d+)')
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"?(\d+)')
@dataclass
class Instr:
    name: str
    shape: str
    op: str
    operands: list
    attrs: str
    root: bool = False

    @property
    def cycles(self) -> int:
        m = _CYCLES_RE.search(self.attrs)
        return int(m.group(1)) if m else 0

    @property
    def collective(self) -> str | None:
        """The collective kind this instruction starts (an async pair counts at its start)."""
        op = self.op[:-6] if self.op.endswith("-start") else self.op
        return op if op in COLLECTIVE_KINDS else None


@dataclass
class Computation:
    name: str
    instrs: list = field(default_factory=list)
    entry: bool = False

    def by_name(self) -> dict:
        return {i.name: i for i in self.instrs}


def shape_bytes(shape: str) -> float:
    """Bytes of a shape string (a tuple's elements summed; layouts ignored)."""
    return float(sum(elements(dims) * DTYPE_BYTES.get(dt, 4)
                     for dt, dims in SHAPE_RE.findall(shape)))


def elements(dims: str) -> int:
    return int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1


def dims_of(shape: str) -> list:
    m = SHAPE_RE.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _close(s: str, i: int) -> int:
    """Index just past the bracket group opening at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] in "([{":
            depth += 1
        elif s[j] in ")]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)


def _split_top(s: str) -> list:
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def parse_instr(line: str) -> Instr | None:
    s = line.strip()
    root = s.startswith("ROOT ")
    if root:
        s = s[5:]
    eq = s.find(" = ")
    if eq < 0 or not s.startswith("%") and not re.match(r"[\w.\-]+ = ", s):
        return None
    name = s[:eq].lstrip("%")
    rest = s[eq + 3:]
    if rest.startswith("("):
        end = _close(rest, 0)
    else:
        end = rest.find(" ")
        j = 0                          # a layout `{...}` holds no spaces, but skip it whole
        while j < len(rest) and rest[j] != " ":
            j = _close(rest, j) if rest[j] == "{" else j + 1
        end = j
    shape, tail = rest[:end], rest[end:].lstrip()
    paren = tail.find("(")
    if paren <= 0:
        return None
    op = tail[:paren]
    close = _close(tail, paren)
    operands = []
    for p in _split_top(tail[paren + 1:close - 1]):
        toks = [t for t in p.split() if t.startswith("%")]
        operands.append(toks[-1].lstrip("%") if toks else p)
    return Instr(name, shape, op, operands, tail[close:], root)


def parse_module(text: str) -> tuple[dict, str]:
    """`({name: Computation}, entry name)` of a compiled HLO module's text."""
    comps: dict = {}
    cur = None
    entry = None
    for line in text.splitlines():
        if cur is None:
            m = _HEADER_RE.match(line.strip()) if line.rstrip().endswith("{") else None
            if m:
                cur = Computation(m.group(2), entry=bool(m.group(1)))
                if cur.entry:
                    entry = cur.name
            continue
        if line.strip() == "}":
            comps[cur.name] = cur
            cur = None
            continue
        ins = parse_instr(line)
        if ins is not None:
            cur.instrs.append(ins)
    if entry is None and comps:
        entry = list(comps)[-1]
    return comps, entry


def callees(ins: Instr) -> list:
    """`[(computation, role)]` this instruction calls; role is 'body', 'condition', 'apply'
    (a reducer or comparator) or 'call' (fusion, call, async, branch)."""
    out = []
    for role, name in _CALL_RE.findall(ins.attrs):
        if role == "to_apply" and ins.op == "call":         # a call names its callee so
            role = "calls"
        out.append((name, {"body": "body", "condition": "condition",
                           "to_apply": "apply"}.get(role, "call")))
    for _, names in _CALL_LIST_RE.findall(ins.attrs):
        out += [(n.strip().lstrip("%"), "call") for n in names.split(",") if n.strip()]
    return out


def _constant(comps: dict, comp: Computation, name: str, depth: int = 0):
    """The integer value of `name` in `comp` if it is a scalar constant (through copies,
    converts and a fusion's parameters), else None."""
    ins = comp.by_name().get(name)
    if ins is None or depth > 8:
        return None
    if ins.op == "constant":
        m = re.match(r"\s*(-?\d+)", ins.operands[0] if ins.operands else "")
        return int(m.group(1)) if m else None
    if ins.op in ("copy", "convert", "bitcast") and ins.operands:
        return _constant(comps, comp, ins.operands[0], depth + 1)
    return None


def trip_count(comps: dict, comp: Computation, ins: Instr):
    """A `while` instruction's trip count, or None when it cannot be read."""
    m = _TRIP_RE.search(ins.attrs)
    if m:
        return int(m.group(1))
    cond = comps.get(dict((r, n) for n, r in callees(ins)).get("condition", ""))
    if cond is None:
        return None
    root = next((i for i in cond.instrs if i.root), None)
    scope = cond
    if root is not None and root.op == "fusion":          # a fused condition: look inside
        inner = comps.get(callees(root)[0][0]) if callees(root) else None
        if inner is not None:
            scope, outer_args = inner, root.operands
            root = next((i for i in inner.instrs if i.root), None)
    if root is None or root.op != "compare" or len(root.operands) != 2:
        return None
    direction = re.search(r"direction=(\w+)", root.attrs)
    direction = direction.group(1) if direction else ""
    vals = [_constant(comps, scope, o) for o in root.operands]
    if scope is not cond:       # a fusion parameter whose argument is a constant outside
        named = scope.by_name()
        for k, o in enumerate(root.operands):
            p = named.get(o)
            if vals[k] is None and p is not None and p.op == "parameter":
                idx = int(re.match(r"\d+", p.operands[0]).group(0))
                vals[k] = _constant(comps, cond, outer_args[idx])
    if (vals[0] is None) == (vals[1] is None):
        return None
    bound = vals[1] if vals[1] is not None else vals[0]
    if vals[0] is not None:                        # constant on the left: flip the direction
        direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
    init = 0
    ind = scope.by_name().get(root.operands[0 if vals[0] is None else 1])
    k = re.search(r"index=(\d+)", ind.attrs) if ind is not None and \
        ind.op == "get-tuple-element" else None
    arg = comp.by_name().get(ins.operands[0]) if ins.operands else None
    if k and arg is not None and arg.op == "tuple" and int(k.group(1)) < len(arg.operands):
        c = _constant(comps, comp, arg.operands[int(k.group(1))])
        init = c if c is not None else 0
    if direction == "LT":
        return max(bound - init, 0)
    if direction == "LE":
        return max(bound - init + 1, 0)
    return None


def multiplicities(comps: dict, entry: str, *, trips: bool = True) -> tuple[dict, list]:
    """`({computation: times one run of the entry runs it}, [while loops])`.

    trips=False counts every `while` body once (as `cost_analysis()` does). Each loop is
    `{'name', 'computation', 'body', 'trip_count' (None: unread, counted once), 'times'}`.
    """
    edges: dict = {n: [] for n in comps}
    loops = []
    for c in comps.values():
        for ins in c.instrs:
            calls = callees(ins)
            if not calls:
                continue
            n = trip_count(comps, c, ins) if ins.op == "while" else None
            if ins.op == "while":
                loops.append({"name": ins.name, "computation": c.name,
                              "body": dict((r, x) for x, r in calls).get("body"),
                              "trip_count": n})
            for callee, role in calls:
                if callee not in edges:
                    continue
                f = 1
                if role == "apply":
                    f = 0
                elif role in ("body", "condition") and trips:
                    f = (n if n is not None else 1) + (role == "condition")
                edges[callee].append((c.name, f))
    # Callers before callees (a depth-first post-order from the entry, reversed), then each
    # computation hands its count down its edges.
    calls_out: dict = {n: [] for n in comps}
    for callee, ins_edges in edges.items():
        for caller, f in ins_edges:
            calls_out[caller].append((callee, f))
    order, done, stack = [], set(), [(entry, iter(calls_out.get(entry, ())))]
    done.add(entry)
    while stack:
        name, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            order.append(name)
            stack.pop()
        elif nxt[0] not in done:
            done.add(nxt[0])
            stack.append((nxt[0], iter(calls_out.get(nxt[0], ()))))
    mult = {n: 0 for n in comps}
    if entry in mult:
        mult[entry] = 1
    for name in reversed(order):
        for callee, f in calls_out.get(name, ()):
            mult[callee] += mult[name] * f
    for lp in loops:
        lp["times"] = mult.get(lp["computation"], 0) * (lp["trip_count"] or 1)
    return mult, loops
