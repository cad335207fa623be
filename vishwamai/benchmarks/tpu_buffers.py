"""Where two TPU compilers part ways on the same program: their largest buffers side by side.

    python -m vishwamai.benchmarks.tpu_buffers --out book/results/tpu_buffers.json

For pairs of grid points that differ only in the TPU generation and on which the planner's
agreement with the compiler differs most, compiles each again with XLA's memory-usage report
(`aot.compile_for_topology(..., buffers=N)`) and keeps the largest HBM allocations. Chapter 4
reads the file to explain its disagreement rows from the compiler's own buffer assignment.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from vishwamai import aot, validate
from vishwamai.benchmarks import tpu_grid

#: (preset, topologies, layout, mode, global batch): the same train step for two generations.
PAIRS = (
    ("llama2_7b", ("v5e:2x2", "v5p:2x2x1"), "fsdp", "train", 4),
    ("llama3_8b", ("v5e:8x8", "v6e:8x8"), "fsdp", "train", 64),
)


def shapes_bytes(buffers: list[dict], pattern: str) -> int:
    """Bytes of the allocations whose value shapes contain `pattern` (e.g. 'f32[4096,32000]')."""
    return sum(b["bytes"] for b in buffers if pattern in b["shapes"])


def head_accumulator(row: dict) -> dict:
    """The chunked loss's f32 `[D, V]` head-gradient accumulator in one compiled row's buffers:
    its allocation's bytes and what else the compiler placed in that allocation."""
    from vishwamai.config import as_config
    c = as_config(row["preset"])
    shape = f"f32[{c.hidden_dim},{c.vocab_size}]"
    for b in row["largest_buffers"] or ():
        if shape in b["shapes"]:
            others = [s for s in b["shapes"].split(", ") if shape not in s]
            return {"shape": shape, "bytes": b["bytes"], "shared_with": ", ".join(others)}
    return {"shape": shape, "bytes": 0, "shared_with": ""}


def overlaps(row: dict, shape_a: str, shape_b: str) -> bool | None:
    """Whether the compiler gave the values of `shape_a` and `shape_b` overlapping addresses
    (values never live at once), None where either is not among the row's largest buffers."""
    def span(shape):
        for b in row["largest_buffers"] or ():
            if shape in b["shapes"]:
                return b["offset"], b["offset"] + b["bytes"]
        return None
    a, b = span(shape_a), span(shape_b)
    if a is None or b is None:
        return None
    return a[0] < b[1] and b[0] < a[1]


def _whole_shapes(shapes: str, width: int = 70) -> str:
    """`shapes` cut to about `width` characters at a comma, never inside a shape: '..., +2 more'."""
    parts = shapes.split(", ")
    kept = []
    for p in parts:
        if kept and len(", ".join(kept + [p])) > width:
            break
        kept.append(p)
    rest = len(parts) - len(kept)
    return ", ".join(kept) + (f", +{rest} more" if rest else "")


def side_by_side(payload: dict, top: int = 8):
    """One table per pair: rank, then each compiler's allocation (GB) and its values' shapes."""
    import pandas as pd
    tables = []
    for preset, topologies, *_ in PAIRS:
        cols = {}
        for topo in topologies:
            row = next(r for r in payload["rows"]
                       if r["preset"] == preset and r["topology"] == topo)
            bufs = (row["largest_buffers"] or [])[:top]
            cols[(topo, "GB")] = [f"{b['bytes'] / 1e9:.2f}" for b in bufs]
            cols[(topo, "values (shapes)")] = [_whole_shapes(b["shapes"]) for b in bufs]
        n = max(len(v) for v in cols.values())
        cols = {k: v + [""] * (n - len(v)) for k, v in cols.items()}
        df = pd.DataFrame(cols, index=pd.RangeIndex(1, n + 1))
        df.columns = pd.MultiIndex.from_tuples(df.columns)
        tables.append((preset, df))
    return tables


def run(pairs=PAIRS, top: int = 16, progress: bool = True) -> dict:
    rows = []
    for preset, topologies, layout, mode, batch in pairs:
        for topo in topologies:
            t0 = time.perf_counter()
            row = aot.compile_for_topology(
                preset, topo, layout=layout, mode=mode, batch_size=batch,
                seq_len=tpu_grid._seq(preset, tpu_grid.TRAIN_SEQ), remat="full",
                dtype=tpu_grid.DTYPE, param_dtype=tpu_grid.DTYPE, buffers=top)
            if row["status"] == "ok":
                row = tpu_grid.with_analytic(row)
            rows.append({k: row.get(k) for k in (
                "preset", "topology", "generation", "chips", "layout", "mode", "batch_size",
                "seq_len", "status", "peak_bytes_per_chip", "argument_bytes", "temp_bytes",
                "analytic_peak_bytes_per_chip", "analytic_parts", "analytic_over_compiler",
                "report_total_bytes", "largest_buffers", "compile_s")})
            if progress:
                print(f"{preset} {topo}: {row['status']} in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    return {"benchmark": "tpu_buffers",
            "provenance": tpu_grid.provenance("python -m vishwamai.benchmarks.tpu_buffers"),
            "rows": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vishwamai.benchmarks.tpu_buffers",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="book/results/tpu_buffers.json")
    p.add_argument("--top", type=tpu_grid._positive, default=16,
                   help="largest allocations kept per program")
    args = p.parse_args(argv)
    try:
        validate.writable_file("--out", args.out)        # before the compiles, not after
    except validate.InputError as e:
        p.error(str(e))
    payload = run(top=args.top)
    tpu_grid._write(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
