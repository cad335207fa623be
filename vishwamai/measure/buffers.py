"""XLA's buffer assignment of one compiled program: which buffers make up its peak.

`memory_analysis()` gives four totals; XLA's memory-usage report (written beside the HLO when
the compiler is asked to dump, `xla_dump_to`) lists the allocations behind them, largest first:
size, how many HLO values share the allocation, and their shapes. Two compilers that report
different peaks for the same program differ here: one places a temporary in memory another
value has finished with, the other keeps both.
"""
from __future__ import annotations

import glob
import os
import re

_ROW_RE = re.compile(r"^\s*[\d.]+\w*\(\s*\d+%\);\s*([\d.]+)(\w+);\s*(\d+);\s*(\d+);\s*(.*)$")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TOTAL_RE = re.compile(r"^Total bytes:\s*(\d+)")


def parse_memory_report(text: str, top: int = 12) -> dict:
    """The first memory space (HBM, colour 0) of an XLA memory-usage report.

    Returns:
      `{'total_bytes': int, 'buffers': [{'bytes', 'offset', 'values', 'shapes'}, ...]}`, the
      `top` largest allocations in the report's order (sizes are the report's, rounded to its
      printed precision). Raises ValueError on text that is not such a report.
    """
    total, rows = None, []
    for line in text.splitlines():
        if total is None:
            m = _TOTAL_RE.match(line.strip())
            if m:
                total = int(m.group(1))
            continue
        if line.startswith("Memory Space") or line.strip().startswith("The rest"):
            break
        m = _ROW_RE.match(line)
        if m:
            size, unit, offset, values, shapes = m.groups()
            if unit not in _UNITS:
                raise ValueError(f"unknown size unit {unit!r} in line {line.strip()!r}")
            rows.append({"bytes": int(float(size) * _UNITS[unit]), "offset": int(offset),
                         "values": int(values), "shapes": shapes.strip()})
        elif rows and not line.strip():
            break                               # the first table ends at a blank line
    if total is None:
        raise ValueError("not an XLA memory-usage report: no 'Total bytes:' line")
    return {"total_bytes": total, "buffers": rows[:top]}


def read_memory_report(dump_dir: str, top: int = 12) -> dict:
    """`parse_memory_report` of the (last) optimized module's report in an XLA dump folder."""
    paths = sorted(glob.glob(os.path.join(dump_dir, "*memory-usage-report.txt")))
    if not paths:
        raise FileNotFoundError(f"no *memory-usage-report.txt in dump_dir={dump_dir!r}")
    with open(paths[-1]) as f:
        return parse_memory_report(f.read(), top=top)
