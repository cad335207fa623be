"""XLA's own accounting of one compiled executable: the only code that reads these APIs.

`CompiledStats.of(compiled)` reads `cost_analysis()` (FLOPs, bytes accessed),
`memory_analysis()` (argument / output / alias / temporary bytes) and, from the compiled HLO
text, the collectives the program runs and the whole-step figures (`step`: FLOPs, bytes,
collectives and the TPU compiler's estimated cycles with every `while` iteration counted,
`measure.hlo_cost.step_figures`; `cost_analysis()` counts a loop body once). It absorbs the
version quirks once: `cost_analysis()` is a dict in current JAX and a list with one dict per
executable in older releases (summed); `memory_analysis()` may be None on a backend that does
not implement it (bytes are then NaN).

Peak bytes follow one definition everywhere in the package: arguments + outputs - aliased
(donated inputs whose buffers the outputs reuse) + temporaries.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from vishwamai.measure.hlo_cost import step_figures

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute")
_HLO_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s8": 1,
                    "u8": 1, "pred": 1, "s64": 8, "u64": 8, "s16": 2, "u16": 2, "f8e4m3fn": 1,
                    "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "c64": 8,
                    "c128": 16, "s4": 0.5, "u4": 0.5}
_OP_RE = re.compile(r" (" + "|".join(COLLECTIVE_KINDS) + r")(-start)?\(")
_SHAPE_RE = re.compile(r"(\w+)\[([\d,]*)\]")


def cost_analysis(compiled) -> dict:
    """`compiled.cost_analysis()` as one dict (a list of per-executable dicts is summed)."""
    ca = compiled.cost_analysis()
    if ca is None:
        return {}
    if isinstance(ca, (list, tuple)):
        out: dict = {}
        for d in ca:
            for k, v in (d or {}).items():
                if isinstance(v, (int, float)):
                    out[k] = out.get(k, 0.0) + float(v)
        return out
    return dict(ca)


def collectives(hlo_text: str) -> dict:
    """`{kind: {'count': n, 'bytes': b}}` for every collective kind in a compiled HLO module.

    Reads instructions `%name = <shape or tuple of shapes> <op>(...)`; an async pair counts once
    (its `-start`). Bytes are those of the op's result on one device (for an async start, the
    tuple that also carries its operand, so an all-gather-start counts operand + result).
    """
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVE_KINDS}
    for line in hlo_text.splitlines():
        m = _OP_RE.search(line)
        if not m or " = " not in line[:m.start()]:
            continue
        entry = out[m.group(1)]
        entry["count"] += 1
        shapes = line[line.index(" = ") + 3:m.start()]
        for dt, dims in _SHAPE_RE.findall(shapes):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            entry["bytes"] += int(size * _HLO_DTYPE_BYTES.get(dt, 4))
    return out


@dataclass(frozen=True)
class CompiledStats:
    """What XLA says about one compiled executable (per device for an SPMD program).

    Attributes:
      flops: `cost_analysis()['flops']`.
      bytes_accessed: `cost_analysis()['bytes accessed']`.
      argument_bytes, output_bytes, alias_bytes, temp_bytes, code_bytes: `memory_analysis()`
        (NaN where the backend has none).
      collectives: `{kind: {'count', 'bytes'}}` from the compiled HLO (empty when not read):
        every collective instruction of the text once (a loop body's once; XLA:TPU's async
        collectives in each of their fusions).
      step: whole-step figures, `step_figures` (empty when the HLO is not read).
    """

    flops: float
    bytes_accessed: float
    argument_bytes: float
    output_bytes: float
    alias_bytes: float
    temp_bytes: float
    code_bytes: float = math.nan
    collectives: dict = dataclasses.field(default_factory=dict)
    step: dict = dataclasses.field(default_factory=dict)

    @property
    def peak_bytes(self) -> float:
        """Arguments + outputs - aliased + temporaries: the program's footprint."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @classmethod
    def of(cls, compiled, *, hlo: bool = False) -> "CompiledStats":
        """Reads `compiled` (a `jax.stages.Compiled`); `hlo=True` also parses its HLO
        (collectives and the whole-step figures)."""
        ca = cost_analysis(compiled)
        ma = compiled.memory_analysis()

        def mem(name):
            return float(getattr(ma, name)) if ma is not None and hasattr(ma, name) else math.nan

        text = (compiled.as_text() or "") if hlo else ""
        return cls(
            flops=float(ca.get("flops", math.nan)),
            bytes_accessed=float(ca.get("bytes accessed", math.nan)),
            argument_bytes=mem("argument_size_in_bytes"),
            output_bytes=mem("output_size_in_bytes"),
            alias_bytes=mem("alias_size_in_bytes"),
            temp_bytes=mem("temp_size_in_bytes"),
            code_bytes=mem("generated_code_size_in_bytes"),
            collectives=collectives(text) if hlo else {},
            step=step_figures(text, ca) if hlo and text else {},
        )

    def memory(self) -> dict:
        """Bytes as ints: argument, output, alias, temp, peak (NaN fields raise)."""
        out = {"argument": self.argument_bytes, "output": self.output_bytes,
               "alias": self.alias_bytes, "temp": self.temp_bytes}
        if any(math.isnan(v) for v in out.values()):
            raise ValueError("this backend gave no memory_analysis()")
        out = {k: int(v) for k, v in out.items()}
        out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
        return out

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["peak_bytes"] = self.peak_bytes
        return d


def compiled_flops(compiled) -> float:
    """`CompiledStats.of(compiled).flops`: the compiler's FLOP count of one executable."""
    return CompiledStats.of(compiled).flops


def compiled_memory(compiled) -> dict:
    """`CompiledStats.of(compiled).memory()`: argument, output, alias, temp and peak bytes.

    argument (inputs), output, alias (outputs sharing an input buffer), temp (XLA's packed
    scratch heap: everything else live during the program), peak (argument + output - alias +
    temp, the program's footprint).
    """
    return CompiledStats.of(compiled).memory()
