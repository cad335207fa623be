"""The vendor kernels in a compiled XLA:GPU program, read from its HLO text.

XLA:GPU hands some work to libraries as custom calls: cuDNN's fused attention
(`__cudnn$fmhaSoftmax` forward, `__cudnn$fmhaSoftmaxBackward`, with a bias or mask
`__cudnn$fmhaScaleBiasSoftmax...`) and cuBLAS(Lt) GEMMs (`__cublas$gemm`,
`__cublas$lt$matmul`, the fp8 one `__cublas$lt$matmul$f8`). Each call's line carries its operands,
its result (for a GEMM a tuple whose last element is the cuBLAS workspace, `s8[bytes]`) and a
JSON backend config (cuDNN's mask type, whether it is the flash kernel, its workspace size).
"""
from __future__ import annotations

import re

_TARGET_RE = re.compile(r'custom_call_target="([^"]+)"')
_DEF_RE = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+\[[\d,]*\])")
_CALL_RE = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (\(.*?\)|\w+\[[\d,]*\])\S* custom-call\(([^)]*)\)")
_ARRAY_RE = re.compile(r"\w+\[[\d,]*\]")
_CONST_RE = re.compile(r"^\s*(%[\w.\-]+) = \w+\[\]\S* constant\(([^)]*)\)")


def custom_calls(hlo_text: str) -> dict:
    """`{custom call target: count}` over a compiled HLO module."""
    out: dict = {}
    for target in _TARGET_RE.findall(hlo_text):
        out[target] = out.get(target, 0) + 1
    return out


def _calls(hlo_text: str, prefix: str):
    defs, consts = {}, {}
    for line in hlo_text.splitlines():
        m = _DEF_RE.match(line)
        if m:
            defs[m.group(1)] = m.group(2)
        c = _CONST_RE.match(line)
        if c:
            consts[c.group(1)] = c.group(2)
    for line in hlo_text.splitlines():
        t = _TARGET_RE.search(line)
        if not t or not t.group(1).startswith(prefix):
            continue
        m = _CALL_RE.match(line)
        result, operands = (m.group(1), m.group(2)) if m else ("", "")
        names = [o.strip().split(" ")[-1] for o in re.sub(r"/\*[^*]*\*/", "", operands).split(",")
                 if o.strip()]
        yield (t.group(1), line, _ARRAY_RE.findall(result), [defs.get(n, n) for n in names],
               [consts.get(n) for n in names])


def _field(line: str, name: str):
    m = re.search(rf'"{name}":\s*"?([\w.\-]+)"?', line)
    return m.group(1) if m else None


def _workspace(results: list) -> int:
    last = results[-1] if results else ""
    if last.startswith("s8[") or last.startswith("u8["):
        return int(last[3:-1] or 0)
    return 0


def cudnn_attention(hlo_text: str) -> list[dict]:
    """Every cuDNN fused-attention call: `{'target', 'flash', 'mask_type', 'q', 'k', 'v',
    'outputs', 'workspace_bytes'}` (operand and output types as HLO prints them;
    `workspace_bytes` is what the backend config states, 0 when XLA did not build the cuDNN
    graph, as in a compilation without a GPU)."""
    out = []
    for target, line, results, ops, _ in _calls(hlo_text, "__cudnn$fmha"):
        ws = _field(line, "workspace_size")
        out.append({"target": target, "flash": _field(line, "is_flash_attention") == "true",
                    "mask_type": _field(line, "mask_type"),
                    "q": ops[0] if ops else None, "k": ops[1] if len(ops) > 1 else None,
                    "v": ops[2] if len(ops) > 2 else None, "outputs": results,
                    "workspace_bytes": int(ws) if ws and ws.isdigit() else None})
    return out


def cublas_gemms(hlo_text: str) -> list[dict]:
    """Every cuBLAS / cuBLASLt GEMM call: `{'target', 'fp8', 'lhs', 'rhs', 'scales',
    'scale_values', 'result', 'workspace_bytes'}`; `scales` are the types of the operands after
    the two matrices (an fp8 call's a and b scales), `scale_values` their values where they are
    constants (else None), `workspace_bytes` the workspace XLA reserves for the call."""
    out = []
    for target, line, results, ops, consts in _calls(hlo_text, "__cublas$"):
        out.append({"target": target, "fp8": target.endswith("$f8"),
                    "lhs": ops[0] if ops else None, "rhs": ops[1] if len(ops) > 1 else None,
                    "scales": ops[2:], "scale_values": consts[2:],
                    "result": results[0] if results else None,
                    "workspace_bytes": _workspace(results)})
    return out
