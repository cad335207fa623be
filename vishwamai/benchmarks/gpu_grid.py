"""XLA:GPU against the planner: a grid of ahead-of-time compilations for H100, H200 and B200.

    python -m vishwamai.bench aot --platform cuda --target h100 --preset llama2_7b \\
        --layout fsdp --mode train --batch 8 --seq 2048 --dtype bfloat16
    python -m vishwamai.benchmarks.gpu_grid --out book/results/gpu_compile.json   # the grid

Each row is one `vishwamai.aot_gpu.compile_for_target` (XLA:GPU's memory, collectives and
custom calls per GPU; 'oom' where the peak exceeds the memory JAX's GPU client takes) with the
planner's bytes for the same point beside it (`aot_gpu.analytic_point`) and both verdicts,
summarised by `tpu_grid.agreement`. The rows follow the TPU grid's sizes (chapter 4: one
sequence of 2048 tokens per device in training, bf16 weights and compute, AdamW, full remat),
on one server of 8 GPUs unless a row says more. The file carries its provenance.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time

from vishwamai import aot_gpu, validate
from vishwamai.benchmarks import tpu_grid
from vishwamai.config import PRESETS

TRAIN_SEQ = tpu_grid.TRAIN_SEQ
DTYPE = tpu_grid.DTYPE
CHECK_PRESETS = tpu_grid.CHECK_PRESETS
#: A 70B-class preset, compiled where the package has one.
LARGE_PRESETS = tuple(p for p in ("llama3_70b", "llama2_70b") if p in PRESETS)

#: Why the planner and XLA:GPU part ways, by (preset or '*', mode, layout or '*'), read off the
#: compiled rows' argument and temporary bytes; chapter 4 prints each disagreement with it.
REASONS: dict = {
    ("tiny", "*", "*"): "a toy model: XLA:GPU's fixed per-program buffers (cuBLAS workspaces, "
                        "collective scratch) outweigh every term the planner scales",
    ("*", "decode", "*"): "one decode step: the planner counts the cache and its updated copy; "
                          "XLA:GPU updates the donated cache in place",
    ("*", "train", "data"): "data parallelism all-reduces every gradient: the compiler keeps "
                            "the combined all-reduce buffers on top of the gradients",
    ("*", "train", "tensor"): "tensor parallelism keeps the batch and the residual stream "
                              "whole on every GPU; the compiler's temporaries differ from the "
                              "planner's activations (not broken down here)",
}


def _reason_key(row):
    for key in ((row["preset"], row["mode"], row["layout"]), (row["preset"], "*", "*"),
                ("*", row["mode"], row["layout"]), ("*", row["mode"], "*")):
        if key in REASONS:
            return REASONS[key]
    return None


def reason(row: dict) -> str:
    """Why the planner and the compiler differ on this row: the mechanism (`REASONS`) and the
    split of both sides into sharded inputs and everything else."""
    g = 1e9
    parts = row.get("analytic_parts", {})
    out = [_reason_key(row)] if _reason_key(row) else []
    planned_in = parts.get("params", 0) + parts.get("optimizer", 0) + parts.get("kv_cache", 0)
    out.append(f"sharded inputs: compiler {row['argument_bytes'] / g:.2f} GB, planner "
               f"{planned_in / g:.2f} GB; temporaries and outputs: compiler "
               f"{(row['peak_bytes_per_chip'] - row['argument_bytes']) / g:.2f} GB, planner "
               f"{(row['analytic_peak_bytes_per_chip'] - planned_in) / g:.2f} GB; usable "
               f"{row['compiler_hbm_bytes_per_chip'] / g:.1f} GB")
    return "; ".join(out)


def grid_points() -> list[dict]:
    """The grid: presets x H100/H200/B200 x train/decode x data/FSDP/tensor on 8 GPUs at
    chapter 4's sizes, a few two-server points, the 70B-class preset where there is one; two
    `tiny` rows first (the test suite's reference)."""
    pts = []

    def add(preset, target, layout, mode, batch, seq, servers=1, **kw):
        dt = {} if preset == "tiny" else dict(dtype=DTYPE, param_dtype=DTYPE)
        pts.append(dict(config=preset, target=target, layout=layout, mode=mode,
                        batch_size=batch, seq_len=min(seq, PRESETS[preset].max_seq_len),
                        gpus_per_server=8, servers=servers, **dt, **kw))

    add("tiny", "h100", "fsdp", "train", 8, 128)
    add("tiny", "b200", "tensor", "decode", 8, 128)
    full = {"remat": "full"}
    per_target = [
        ("base", "fsdp", "train", 8, TRAIN_SEQ, full),
        ("llama2_7b", "fsdp", "train", 8, TRAIN_SEQ, full),
        ("llama3_8b", "tensor", "decode", 8, 8192, {}),
        ("xl", "fsdp", "train", 8, TRAIN_SEQ, full),
        ("gpt2", "data", "train", 16, 1024, full),
        ("tinyllama_1_1b", "data", "train", 8, TRAIN_SEQ, full),
        ("xxl", "fsdp", "train", 8, TRAIN_SEQ, full),
        ("llama3_8b", "data", "train", 8, TRAIN_SEQ, full),
        ("llama2_7b", "tensor", "decode", 16, 4096, {}),
        ("large", "data", "decode", 32, 2048, {}),
        ("llama2_7b", "data", "decode", 8, 4096, {}),
        # replicated states and caches near or past a GPU's memory
        ("xxl", "data", "train", 8, TRAIN_SEQ, full),
        ("llama2_7b", "data", "decode", 128, 4096, {}),
    ]
    for preset, layout, mode, batch, seq, kw in per_target:
        for target in aot_gpu.TARGETS:
            add(preset, target, layout, mode, batch, seq, **kw)
    add("llama2_7b", "h100", "tensor", "train", 8, TRAIN_SEQ, **full)
    add("llama2_7b", "h100", "data", "train", 8, TRAIN_SEQ, **full)
    add("gpt2", "h100", "tensor", "decode", 16, 1024)
    add("llama3_8b", "h100", "fsdp", "train", 16, TRAIN_SEQ, servers=2, **full)
    for big in LARGE_PRESETS:
        add(big, "h100", "fsdp", "train", 16, TRAIN_SEQ, servers=2, **full)
        add(big, "h200", "fsdp", "train", 8, TRAIN_SEQ, **full)
        add(big, "b200", "tensor", "decode", 8, 4096)
    return pts


def with_analytic(row: dict, config=None) -> dict:
    """`row` plus the planner's bytes and verdict for the same point, and whether they agree."""
    a = aot_gpu.analytic_point(row, config=config)
    row = {**row, **a}
    row["verdicts_agree"] = bool(row["analytic_fits"] == (row["status"] == "ok"))
    if row["status"] == "ok":
        row["analytic_over_compiler"] = (a["analytic_peak_bytes_per_chip"]
                                         / row["peak_bytes_per_chip"])
    return row


def provenance(command: str) -> dict:
    import jax
    return {"versions": aot_gpu.versions(), "jax": jax.__version__,
            "targets": {t: f"vishwamai/data/gpu_targets/{f}" for t, (f, _) in
                        aot_gpu.TARGETS.items()},
            "mem_fraction": aot_gpu.MEM_FRACTION,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "host": platform.machine(), "host_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "compiled by XLA:GPU for GPUs described by XLA's target configs, on a CPU "
                    "host with JAX_PLATFORMS=cpu; no autotuning, no cost analysis; nothing ran"}


def run(points: list[dict], *, out: str | None = None, command: str = "",
        progress: bool = True) -> dict:
    """Compiles every point, adds the planner's side, writes `out` after each row."""
    payload = {"benchmark": "gpu_compile", "provenance": provenance(command), "rows": []}
    t0 = time.perf_counter()
    for i, pt in enumerate(points):
        try:
            row = with_analytic(aot_gpu.compile_for_target(**pt))
        except Exception as e:  # noqa: BLE001 - keep the grid going; the row says what failed
            row = {**pt, "preset": pt["config"], "status": "error", "compile_s": 0.0,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"}
            print(f"error at {pt}: {row['error']}", file=sys.stderr, flush=True)
        payload["rows"].append(row)
        done = [r for r in payload["rows"] if r["status"] != "error"]
        payload["total_compile_s"] = sum(r["compile_s"] for r in payload["rows"])
        payload["elapsed_s"] = time.perf_counter() - t0
        payload["agreement"] = tpu_grid.agreement(done)
        if out:
            tpu_grid._write(out, payload)
        if progress and row["status"] != "error":
            print(f"[{i + 1}/{len(points)}] {tpu_grid._line(row)}", file=sys.stderr, flush=True)
    return payload


# ============================================================================================
# command line: `python -m vishwamai.bench aot --platform cuda ...` and the grid
# ============================================================================================

def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`bench aot`'s arguments: the TPU form's, plus the platform and the GPU target."""
    tpu_grid.add_arguments(p)
    p.add_argument("--platform", choices=("tpu", "cuda"), default="tpu",
                   help="tpu: XLA:TPU for --topology; cuda: XLA:GPU for --target")
    p.add_argument("--target", type=tpu_grid._choice(aot_gpu.shipped_targets(), "GPU target"),
                   default="h100", help=f"GPU (with --platform cuda): "
                                        f"{', '.join(aot_gpu.shipped_targets())}")
    p.add_argument("--gpus", type=tpu_grid._positive, default=8,
                   help=f"GPUs per server, 1 to {aot_gpu.MAX_GPUS_PER_SERVER} (--platform cuda)")
    p.add_argument("--servers", type=tpu_grid._positive, default=1,
                   help="servers, all GPUs in one mesh (--platform cuda)")
    return p


def main(args: argparse.Namespace) -> dict:
    """`bench aot`: the TPU form (`tpu_grid.main`) or, with `--platform cuda`, one XLA:GPU row
    per layout x mode, printed as a table and written with provenance."""
    if args.platform != "cuda":
        return tpu_grid.main(args)
    if getattr(args, "expert", 1) != 1:
        raise validate.InputError(f"--expert {args.expert}: an expert axis is compiled for "
                                  "--platform tpu only")
    aot_gpu.topology_name(args.gpus, args.servers)          # checks before any work
    points = [dict(config=args.preset, target=args.target, layout=layout, mode=mode,
                   batch_size=args.batch, seq_len=args.seq, cache_len=args.cache_len,
                   gpus_per_server=args.gpus, servers=args.servers,
                   attention_impl=args.attention_impl, remat=args.remat, dtype=args.dtype,
                   param_dtype=args.dtype, num_layers=args.layers)
              for layout in args.layout for mode in args.mode]
    aot_gpu.require_cuda_plugin()
    payload = run(points, command="python -m vishwamai.bench " + " ".join(sys.argv[1:]),
                  progress=False)
    errors = [r for r in payload["rows"] if r["status"] == "error"]
    print(tpu_grid.format_table([r for r in payload["rows"] if r["status"] != "error"]))
    for r in payload["rows"]:
        if r["status"] != "error":
            calls = ", ".join(f"{k} x{v}" for k, v in r["custom_calls"].items()) or "none"
            print(f"{r['preset']} {r['layout']} {r['mode']}: custom calls: {calls}")
    for r in errors:
        print(f"error: {r['error']}", file=sys.stderr)
    if args.out:
        tpu_grid._write(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def _grid_main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vishwamai.benchmarks.gpu_grid",
                                description="the GPU compile grid of Chapter 4")
    p.add_argument("--out", default="book/results/gpu_compile.json")
    p.add_argument("--points", default=None,
                   help="comma-separated point indices to compile instead of all")
    args = p.parse_args(argv)
    command = "python -m vishwamai.benchmarks.gpu_grid " + " ".join(
        sys.argv[1:] if argv is None else argv)
    pts = grid_points()
    chosen = [pts[int(i)] for i in args.points.split(",")] if args.points else pts
    payload = run(chosen, out=args.out, command=command.strip())
    print(tpu_grid.format_table([r for r in payload["rows"] if r["status"] != "error"]))
    agreement = payload["agreement"]
    print({k: (round(v, 3) if isinstance(v, float) and not math.isnan(v) else v)
           for k, v in agreement.items()})
    print(f"total compile time {payload['total_compile_s']:.0f} s; wrote {args.out}")
    return payload


if __name__ == "__main__":
    _grid_main(sys.argv[1:])
