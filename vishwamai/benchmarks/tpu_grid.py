"""The TPU compiler against the planner: a grid of ahead-of-time compilations for TPU slices.

    python -m vishwamai.bench aot --preset tiny --topology v5e:2x2 --layout fsdp --mode train \\
        --batch 8 --seq 128 --out x.json
    python -m vishwamai.benchmarks.tpu_grid --out book/results/tpu_compile.json   # the grid

Each row is one `vishwamai.aot.compile_for_topology` (XLA:TPU's memory, FLOPs, collectives and
out-of-memory verdict per chip) with the package's analytic per-chip bytes for the same point
beside it (`analysis.roofline.memory_per_chip`) and the two verdicts (fits / does not fit).
`agreement` summarises how often they agree. Files carry their provenance: libtpu and JAX
versions, date, command, total compile time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

from vishwamai import aot, validate
from vishwamai.config import ATTENTION_IMPLS, DTYPES, PRESETS, REMAT_POLICIES
from vishwamai.benchmarks.tpu_grid_points import (  # noqa: F401
    CHECK_PRESETS, DTYPE, FOUR, GRID_PRESETS, MEGACORE, MEGACORE_REASON, REASONS, SERVE_SEQ,
    SIXTEEN, SIXTY_FOUR, TRAIN_SEQ, TWO_FIFTY_SIX, _reason_key, _seq, _siblings, grid_points,
    moe_grid_points, reason)

def fp8_findings(generations=("v5e", "v5p", "v6e")) -> list[dict]:
    """`aot.fp8_gemm_on_tpu` for each generation (1024^3, per-tensor scaling)."""
    return [aot.fp8_gemm_on_tpu(g) for g in generations]


def with_analytic(row: dict, config=None) -> dict:
    """`row` plus the planner's bytes and verdict for the same point, and whether they agree."""
    a = aot.analytic_point(row, config=config)
    row = {**row, **a}
    compiled_fits = row["status"] == "ok"
    row["verdicts_agree"] = bool(row["analytic_fits"] == compiled_fits)
    if compiled_fits:
        row["analytic_over_compiler"] = a["analytic_peak_bytes_per_chip"] / row["peak_bytes_per_chip"]
        row.update(with_clock(row, config))
    return row


def with_clock(row: dict, config=None) -> dict:
    """The compiler's step time for a compiled train row (`analysis.clock`: its whole-step
    estimated cycles at the chip's clock), beside the planner's for the same point (40% MFU,
    no overlap) and their ratio; {} for rows without estimated cycles or not 'train'."""
    if row.get("mode") != "train" or not (row.get("estimated_cycles") or {}).get("total"):
        return {}
    from vishwamai.analysis import planner
    from vishwamai.analysis.clock import step_seconds
    from vishwamai.analysis.flops import flops
    cfg = aot.model_config(config or row["preset"], remat=row.get("remat"),
                           num_layers=row.get("num_layers"))
    tokens = row["batch_size"] * row["seq_len"]
    fpt = flops(cfg, batch=row["batch_size"], seq_len=row["seq_len"], mode="train",
                remat="none")["model"] / tokens
    hardware = aot.parse_topology(row["topology"])["hardware"]
    est = step_seconds({"cycles": row["estimated_cycles"]}, hardware,
                       tokens_per_device=tokens / row["chips"], model_flops_per_token=fpt)
    out = {"clock_step_s": est["seconds"]["total"],
           "clock_compute_s": est["seconds"]["compute"],
           "clock_collective_s": est["seconds"]["collective"],
           "clock_copy_s": est["seconds"]["copy"],
           "clock_tokens_per_s_per_chip": est["tokens_per_s_per_chip"],
           "clock_mfu": est["mfu"], "clock_fields": True}
    try:
        p = planner.step(cfg, hardware, {row["layout"]: row["chips"]}, batch=row["batch_size"],
                         seq_len=row["seq_len"], remat=row.get("remat"))
    except Exception as e:  # noqa: BLE001 - a point the planner refuses still has its clock
        out["planner_error"] = str(e)[:200]
        return out
    out.update(planner_step_s=p["step_s"], clock_over_planner=out["clock_step_s"] / p["step_s"])
    return out


def agreement(rows: list[dict]) -> dict:
    """Share of rows where the verdicts agree, and of rows that compiled where the analytic
    peak is within 15% of the compiler's. The `tiny` rows (the test suite's reference
    compilations, not one of the book's presets) are left out."""
    rows = [r for r in rows if r["preset"] not in CHECK_PRESETS]
    n = len(rows)
    agree = sum(r["verdicts_agree"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    err = [abs(r["analytic_over_compiler"] - 1) for r in ok]
    close = sum(e <= 0.15 for e in err)
    return {"rows": n, "verdicts_agree": agree, "verdict_agreement": agree / n if n else math.nan,
            "compiled_ok": len(ok), "within_15pct": close,
            "within_15pct_share": close / len(ok) if ok else math.nan,
            "within_25pct_share": sum(e <= 0.25 for e in err) / len(ok) if ok else math.nan,
            "worst_ratio_error": max(err) if err else math.nan}


def provenance(command: str) -> dict:
    import jax
    return {"libtpu": aot.libtpu_version(), "jax": jax.__version__,
            "prng_impl": str(jax.config.jax_default_prng_impl),
            "matmul_precision": jax.config.jax_default_matmul_precision,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "host": platform.machine(), "host_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "compiled by XLA:TPU for abstract TPU devices on a CPU host; nothing ran"}


def _write(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(tmp, path)


def run(points: list[dict], *, out: str | None = None, command: str = "",
        progress: bool = True) -> dict:
    """Compiles every point, adds the analytic side, writes `out` after each row."""
    payload = {"benchmark": "tpu_compile", "provenance": provenance(command), "rows": []}
    t0 = time.perf_counter()
    for i, pt in enumerate(points):
        try:
            row = aot.compile_for_topology(**pt)
        except Exception as e:  # noqa: BLE001 - keep the grid going; the row says what failed
            row = {**pt, "preset": pt["config"], "status": "error", "compile_s": 0.0,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"}
            print(f"error at {pt}: {row['error']}", file=sys.stderr, flush=True)
        else:
            row = with_analytic(row)
        payload["rows"].append(row)
        payload["total_compile_s"] = sum(r["compile_s"] for r in payload["rows"])
        payload["elapsed_s"] = time.perf_counter() - t0
        payload["agreement"] = agreement([r for r in payload["rows"] if r["status"] != "error"])
        if out:
            _write(out, payload)
        if progress and row["status"] != "error":
            print(f"[{i + 1}/{len(points)}] {_line(row)}", file=sys.stderr, flush=True)
    return payload


COLUMNS = ("preset", "topology", "chips", "layout", "mode", "batch_size", "seq_len", "status",
           "peak_GB", "analytic_GB", "ratio", "hbm_GB", "needed_GB", "TFLOP", "collectives",
           "compile_s")


def _cells(r: dict) -> dict:
    g = 1e9
    coll = ",".join(f"{k}:{v['count']}" for k, v in (r.get("collectives") or {}).items())
    return {"preset": r["preset"], "topology": r["topology"], "chips": r["chips"],
            "layout": r["layout"] + (f"+expert{r['expert_parallel']}"
                                     if r.get("expert_parallel", 1) > 1 else ""),
            "mode": r["mode"], "batch_size": r["batch_size"],
            "seq_len": r["seq_len"], "status": r["status"],
            "peak_GB": f"{r['peak_bytes_per_chip'] / g:.2f}" if r["status"] == "ok" else "",
            "analytic_GB": (f"{r['analytic_peak_bytes_per_chip'] / g:.2f}"
                            if "analytic_peak_bytes_per_chip" in r else ""),
            "ratio": f"{r['analytic_over_compiler']:.2f}" if "analytic_over_compiler" in r else "",
            "hbm_GB": f"{r['compiler_hbm_bytes_per_chip'] / g:.2f}",
            "needed_GB": f"{r['needed_bytes'] / g:.2f}" if r["status"] == "oom" else "",
            "TFLOP": (f"{r['flops_per_chip'] / 1e12:.3f}"    # none from XLA:GPU (NaN)
                      if r["status"] == "ok" and r["flops_per_chip"] == r["flops_per_chip"]
                      else ""),
            "collectives": coll, "compile_s": f"{r['compile_s']:.1f}"}


def _line(r: dict) -> str:
    c = _cells(r)
    return " ".join(f"{k}={c[k]}" for k in COLUMNS if c[k] != "")


def format_table(rows: list[dict]) -> str:
    cells = [_cells(r) for r in rows]
    widths = {k: max(len(k), *(len(str(c[k])) for c in cells)) for k in COLUMNS}
    lines = ["  ".join(k.rjust(widths[k]) for k in COLUMNS)]
    lines += ["  ".join(str(c[k]).rjust(widths[k]) for k in COLUMNS) for c in cells]
    return "\n".join(lines)


# ============================================================================================
# command line (`python -m vishwamai.bench aot ...` and this module's grid)
# ============================================================================================

def _csv(choices, what):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"{what} {bad or text!r} not accepted; choose from {list(choices)} "
                "(several comma-separated)")
        return items
    return parse


def _topology(text: str) -> str:
    try:
        return aot.parse_topology(text)["name"]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_positive = validate.cli_type(validate.positive_int, int, what="an int")


def _choice(choices, what):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"{what} {text!r} is not accepted: expected one of {list(choices)}")
        return text
    return parse


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset")
    p.add_argument("--topology", type=_topology, default="v5e:2x2",
                   help=f"TPU slice: {aot.TOPOLOGY_FORM}")
    p.add_argument("--layout", type=_csv(aot.LAYOUTS, "layout"), default=["fsdp"],
                   help="data, fsdp, tensor (comma-separated for several)")
    p.add_argument("--mode", type=_csv(aot.MODES, "mode"), default=["train"],
                   help="train, forward, decode (comma-separated for several)")
    p.add_argument("--batch", type=_positive, default=8, help="global batch size B")
    p.add_argument("--seq", type=_positive, default=128, help="sequence length T")
    p.add_argument("--cache-len", type=_positive, default=None,
                   help="KV cache positions for decode (default: --seq)")
    p.add_argument("--attention-impl", type=_choice(ATTENTION_IMPLS, "attention implementation"),
                   default=None, help="attention kernel override")
    p.add_argument("--remat", type=_choice(REMAT_POLICIES, "remat policy"), default=None,
                   help="remat policy override")
    p.add_argument("--dtype", type=_choice(tuple(DTYPES), "dtype"), default=None,
                   help="compute and parameter dtype override")
    p.add_argument("--layers", type=_positive, default=None,
                   help="override the preset's number of layers (a shallow copy, for checks)")
    p.add_argument("--expert", type=_positive, default=1,
                   help="chips on an 'expert' mesh axis (a mixture of experts' experts split "
                        "over them; the rest on --layout); 1: none")
    p.add_argument("--out", type=validate.cli_type(validate.writable_file, str), default=None,
                   help="write the rows as JSON here")
    return p


def main(args: argparse.Namespace) -> dict:
    """`bench aot`: one row per layout x mode, printed as a table, written with provenance."""
    points = [dict(config=args.preset, topology=args.topology, layout=layout, mode=mode,
                   batch_size=args.batch, seq_len=args.seq, cache_len=args.cache_len,
                   attention_impl=args.attention_impl, remat=args.remat, dtype=args.dtype,
                   param_dtype=args.dtype, num_layers=args.layers,
                   **({"expert": args.expert} if args.expert != 1 else {}))
              for layout in args.layout for mode in args.mode]
    command = "python -m vishwamai.bench " + " ".join(sys.argv[1:])
    payload = run(points, out=None, command=command, progress=False)
    print(format_table(payload["rows"]))
    if args.out:
        _write(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def merge(paths: list[str], out: str, command: str, *, fp8: bool = True) -> dict:
    """One grid file from shards written by `--start/--stop/--points` runs (in the order
    given; a point compiled again in a later file replaces the earlier row)."""
    parts = [json.loads(open(p).read()) for p in paths]
    by_key: dict = {}
    for part in parts:                     # a later file's row replaces an earlier one's
        for r in part["rows"]:
            # rows compiled before the expert axis existed carry no 'expert_parallel': 1
            key = tuple(str(r.get(k, 1 if k == "expert_parallel" else None))
                        for k in ("preset", "topology", "layout", "mode", "batch_size",
                                  "seq_len", "dtype", "remat", "expert_parallel"))
            by_key[key] = r
    # the planner's side recomputed with the current model (the compiler's side is the data)
    rows = [with_analytic(r) if r["status"] != "error" else r for r in by_key.values()]
    payload = {"benchmark": "tpu_compile", "provenance": provenance(command), "rows": rows,
               "shards": [{"start": d.get("start", 0), "command": d["provenance"]["command"],
                           "date": d["provenance"]["date"], "elapsed_s": d.get("elapsed_s")}
                          for d in parts],
               "total_compile_s": sum(r["compile_s"] for r in rows),
               "agreement": agreement([r for r in rows if r["status"] != "error"])}
    for d in parts:
        if "fp8" in d:
            payload["fp8"] = d["fp8"]
    if fp8 and "fp8" not in payload:
        payload["fp8"] = fp8_findings()
    _write(out, payload)
    return payload


def _grid_main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vishwamai.benchmarks.tpu_grid",
                                description="the TPU compile grid of Chapter 4")
    p.add_argument("--grid", choices=("dense", "moe"), default="dense",
                   help="the dense presets' grid (chapter 4) or the mixture-of-experts one "
                        "(chapter 3d)")
    p.add_argument("--out", default=None, help="default: book/results/tpu_compile.json, "
                   "or tpu_compile_moe.json for --grid moe")
    p.add_argument("--start", type=int, default=0, help="first point (for shards run in parallel)")
    p.add_argument("--stop", type=int, default=None, help="one past the last point")
    p.add_argument("--limit", type=_positive, default=None, help="first N points only")
    p.add_argument("--points", default=None,
                   help="comma-separated point indices to compile instead of a range")
    p.add_argument("--merge", nargs="+", default=None,
                   help="merge these shard files into --out instead of compiling")
    args = p.parse_args(argv)
    args.out = args.out or ("book/results/tpu_compile_moe.json" if args.grid == "moe"
                            else "book/results/tpu_compile.json")
    command = "python -m vishwamai.benchmarks.tpu_grid " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.merge:
        payload = merge(args.merge, args.out, command.strip(), fp8=args.grid == "dense")
        print(json.dumps(payload["agreement"]))
        return payload
    pts = moe_grid_points() if args.grid == "moe" else grid_points()
    stop = args.stop if args.stop is not None else len(pts)
    if args.limit:
        stop = min(stop, args.start + args.limit)
    whole = args.start == 0 and stop == len(pts) and not args.points
    chosen = ([pts[int(i)] for i in args.points.split(",")] if args.points
              else pts[args.start:stop])
    payload = run(chosen, out=args.out, command=command.strip())
    payload["start"] = args.start
    if args.grid == "dense" and (whole or (stop == len(pts) and not args.points)):
        payload["fp8"] = fp8_findings()
    _write(args.out, payload)
    print(format_table([r for r in payload["rows"] if r["status"] != "error"]))
    print(json.dumps(payload["agreement"]))
    print(f"total compile time {payload['total_compile_s']:.0f} s; wrote {args.out}")
    return payload


if __name__ == "__main__":
    _grid_main(sys.argv[1:])
