"""Benchmark CLI: `python -m vishwamai.bench {forward,train,baseline,attention,gemm,compile,aot,report}`

    python -m vishwamai.bench forward --preset small --batch 1 8 --seq 256 --out fwd.json
    python -m vishwamai.bench train --preset small --batch 8 --seq 256 --remat none full
    python -m vishwamai.bench baseline --preset small   # against plain Flax, timed alternately
    python -m vishwamai.bench attention ...          # vishwamai.benchmarks.attention
    python -m vishwamai.bench gemm ...               # vishwamai.benchmarks.gemm
    python -m vishwamai.bench aot --preset tiny --topology v5e:2x2 --layout fsdp --mode train \
        --batch 8 --seq 128 --out x.json           # XLA:TPU's own numbers, compiled on this host
    python -m vishwamai.bench aot --platform cuda --target h100 --preset llama2_7b \
        --layout fsdp --mode train                 # XLA:GPU's, for 8 H100s (vishwamai.aot_gpu)
    python -m vishwamai.bench report --out book/results/h100.json
    python -m vishwamai.bench compile --presets tiny base   # vishwamai.benchmarks.compilation

Every subcommand warms up, reports compile time apart, takes the median and spread of repeats,
records an out-of-memory point as a row, prints a table and (with `--out`) writes JSON with the
environment (device, versions, date) attached. `report` runs the accelerator suite the book
shows (seed presets base and large in bf16: forward and training sweeps, attention and GEMM
benchmarks) into one file, inside a time budget.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import pandas as pd

from vishwamai.aot import LibtpuMissingError
from vishwamai.aot_gpu import CudaPluginMissingError
from vishwamai.benchmarks import attention as attention_bench
from vishwamai.benchmarks import compilation
from vishwamai.benchmarks import gemm as gemm_bench
from vishwamai.benchmarks import gpu_grid
from vishwamai.benchmarks import model as mb
from vishwamai.benchmarks.harness import device_peak, results_frame, save_results
from vishwamai import validate
from vishwamai.config import ATTENTION_IMPLS, DTYPES, PRESETS, REMAT_POLICIES
from vishwamai.kernels.attention import available_implementations
from vishwamai.measure import env_info

EXTERNAL = {"attention": attention_bench, "gemm": gemm_bench}
SECTIONS = ("forward", "train", *EXTERNAL)


def _preset(name: str) -> str:
    if name != "auto" and name not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"unknown preset {name!r}; choose 'auto' or one of {sorted(PRESETS)}")
    return name


def _dtype(name: str) -> str:
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return name


def _remat(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise argparse.ArgumentTypeError(
            f"unknown remat policy {name!r}; choose one of {list(REMAT_POLICIES)}")
    return name


_positive = validate.cli_type(validate.positive_int, int, what="an int")
_out = validate.cli_type(validate.writable_file, str, what="a file path")


def _attention_impl(name: str) -> str:
    """A kernel this backend runs (checked before anything is measured)."""
    here = available_implementations()
    if name not in here:
        raise argparse.ArgumentTypeError(
            f"attention implementation {name!r} is not accepted: expected one of {list(here)} "
            f"(those that run on this backend; all names: {list(ATTENTION_IMPLS)})")
    return name


def _common(p: argparse.ArgumentParser, *, repeats: int) -> None:
    p.add_argument("--preset", type=_preset, default="auto",
                   help="model preset ('auto': small on CPU, base on accelerators)")
    p.add_argument("--batch", type=_positive, nargs="+", default=[8], help="batch sizes")
    p.add_argument("--seq", type=_positive, nargs="+", default=[256], help="sequence lengths")
    p.add_argument("--dtype", type=_dtype, default=None, help="compute dtype (default: preset's)")
    p.add_argument("--attention-impl", type=_attention_impl, default=None,
                   help="attention kernel override")
    p.add_argument("--repeats", type=_positive, default=repeats, help="timed repeats")
    p.add_argument("--warmup", type=_positive, default=1, help="untimed warm-up calls")
    p.add_argument("--out", type=_out, default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vishwamai.bench",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("forward", help="forward latency and throughput (logits)")
    _common(p, repeats=5)
    p = sub.add_parser("train", help="training step tokens/s and MFU")
    _common(p, repeats=3)
    p.add_argument("--remat", type=_remat, nargs="+", default=[None],
                   help="remat policies to sweep (default: the preset's)")
    p.add_argument("--accum-steps", type=_positive, default=1, help="gradient accumulation")
    p = sub.add_parser("baseline", help="forward and train step against a plain Flax "
                       "implementation of the same model, timed alternately in one process")
    p.add_argument("--preset", type=_preset, default="auto",
                   help="model preset ('auto': small on CPU, base on accelerators)")
    p.add_argument("--batch", type=_positive, default=8, help="batch size")
    p.add_argument("--seq", type=_positive, default=256, help="sequence length")
    p.add_argument("--dtype", type=_dtype, default=None, help="compute dtype (default: preset's)")
    p.add_argument("--repeats", type=_positive, default=3, help="timed repeats of each")
    p.add_argument("--out", type=_out, default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("aot", help="compile for a TPU topology with XLA:TPU (needs libtpu) or, "
                       "with --platform cuda, for H100/H200/B200 GPUs with XLA:GPU (needs the "
                       "CUDA plugin); nothing runs: per-device memory, collectives, OOM verdicts, "
                       "beside the planner's bytes (vishwamai.benchmarks.tpu_grid, gpu_grid)")
    gpu_grid.add_arguments(p)      # imports without libtpu or the plugin; compiling needs them
    p.set_defaults(_module=gpu_grid)
    p = sub.add_parser("report", help="the accelerator suite for the book, into one JSON file")
    p.add_argument("--out", type=_out, required=True,
                   help="JSON file (e.g. book/results/h100.json)")
    p.add_argument("--presets", type=_preset, nargs="+", default=["base", "large"])
    p.add_argument("--dtype", type=_dtype, default="bfloat16")
    p.add_argument("--budget-s", default=420.0,
                   type=validate.cli_type(validate.non_negative, float, what="a number"),
                   help="stop starting new measurements after this many seconds")
    p.add_argument("--quick", action="store_true", help="one point per sweep (smoke test)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="which parts of the suite to run (default: all)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("compile", help="compile seconds of a train step, scanned vs unrolled "
                       "blocks, on CPU or a TPU topology (vishwamai.benchmarks.compilation)")
    compilation.add_arguments(p)
    p.set_defaults(_module=compilation)
    for name, mod in EXTERNAL.items():
        p = sub.add_parser(name, help=f"{name} benchmark ({mod.__name__})")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _print_table(rows, columns) -> None:
    df = results_frame(rows)
    cols = [c for c in columns if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df[cols].to_string(index=False))


_COLUMNS = ("kind", "model", "dtype", "remat", "batch_size", "seq_len", "status", "compile_s",
            "median_s", "p10_s", "p90_s", "tokens_per_s", "mfu", "mfu_best")


def _run_model(args, kind: str) -> dict:
    kw = dict(dtype=args.dtype, attention_impl=args.attention_impl, repeats=args.repeats,
              warmup=args.warmup)
    rows = []
    if kind == "forward":
        rows = mb.sweep("forward", args.preset, batch_sizes=args.batch, seq_lens=args.seq,
                        progress=not args.no_progress, **kw)
    else:
        for remat in args.remat:
            rows += mb.sweep("train", args.preset, batch_sizes=args.batch, seq_lens=args.seq,
                             progress=not args.no_progress, remat=remat,
                             accum_steps=args.accum_steps, **kw)
    payload = {"kind": kind, "rows": rows, "env": env_info()}
    _print_table(rows, _COLUMNS)
    if args.out:
        save_results(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def _run_baseline(args) -> dict:
    rows = mb.versus_baseline(args.preset, args.batch, args.seq, dtype=args.dtype,
                           repeats=args.repeats, progress=not args.no_progress)
    payload = {"kind": "baseline", "rows": rows, "env": env_info()}
    _print_table(rows, ("kind", "model", "batch_size", "seq_len", "median_s",
                        "baseline_median_s", "speedup", "mfu", "baseline_mfu"))
    if args.out:
        save_results(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def run_report(args) -> dict:
    """The accelerator suite: seed presets in bf16, forward and training sweeps, attention and
    GEMM benchmarks, each section skipped (and said so) once `budget_s` has been used."""
    t_start = time.perf_counter()
    payload = {"kind": "report", "env": env_info(), "sections": {}, "skipped": []}
    peak = device_peak(args.dtype)
    payload["peak_flops_per_s"], payload["peak_source"] = peak
    quick = args.quick

    def budget_left() -> bool:
        return time.perf_counter() - t_start < args.budget_s

    plan = []
    for preset in args.presets:
        fwd_b = [8] if quick else [1, 8, 32]
        plan.append((f"forward/{preset}", "forward", preset,
                     dict(batch_sizes=fwd_b, seq_lens=[512] if not quick else [128])))
        if not quick:
            plan.append((f"forward_long/{preset}", "forward", preset,
                         dict(batch_sizes=[8], seq_lens=[2048])))
        tr = [("none", [8])] if quick else [("none", [8, 32]), ("full", [32])]
        for remat, bs in tr:
            plan.append((f"train/{preset}/{remat}", "train", preset,
                         dict(batch_sizes=bs, seq_lens=[512] if not quick else [128],
                              remat=remat)))
    for name, kind, preset, kw in plan:
        if kind not in args.sections:
            continue
        if not budget_left():
            payload["skipped"].append(name)
            continue
        rows = mb.sweep(kind, preset, dtype=args.dtype, progress=not args.no_progress,
                        peak=peak, repeats=3 if kind == "train" else 5, **kw)
        payload["sections"][name] = rows
        save_results(args.out, payload)          # keep what is done if a later part dies
    for name, mod in EXTERNAL.items():
        if name not in args.sections:
            continue
        if not budget_left():
            payload["skipped"].append(name)
            continue
        sub = argparse.ArgumentParser()
        mod.add_arguments(sub)
        sub_args = sub.parse_args([])
        payload["sections"][name] = mod.main(sub_args)
        save_results(args.out, payload)
    payload["elapsed_s"] = time.perf_counter() - t_start
    save_results(args.out, payload)
    for name, rows in payload["sections"].items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "kind" in rows[0]:
            print(f"== {name}")
            _print_table(rows, _COLUMNS)
    print(f"wrote {args.out} in {payload['elapsed_s']:.0f} s; skipped: {payload['skipped']}")
    return payload


def _all_failed(result) -> list[str]:
    """The errors of a result whose every row failed (nothing was measured), else []."""
    rows = result.get("rows") if isinstance(result, dict) else None
    if not rows:
        return []
    failed = [r for r in rows if r.get("status") == "error"
              or ("error" in r and r.get("status", "error") == "error")]
    return [str(r.get("error")) for r in failed] if len(failed) == len(rows) else []


def _dispatch(args) -> dict:
    if args.command in ("forward", "train"):
        return _run_model(args, args.command)
    if args.command == "baseline":
        return _run_baseline(args)
    if args.command == "report":
        return run_report(args)
    result = args._module.main(args)
    fmt = getattr(args._module, "format_result", None)
    if fmt is not None and args.command in EXTERNAL:
        print(fmt(result))
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses and checks every argument before any work; bad input exits with status 2 and a
    one-paragraph `error:` message (no traceback), a run that measured nothing with status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    if args.command == "train":
        for b in args.batch:
            if b % args.accum_steps:
                parser.exit(2, f"{prog}: error: argument --accum-steps: {args.accum_steps} does "
                               f"not divide --batch {b} (each microbatch gets batch / "
                               f"accum-steps rows)\n")
    try:
        result = _dispatch(args)
    except (validate.InputError, LibtpuMissingError, CudaPluginMissingError) as e:   # a clear message, not a traceback
        parser.exit(2, f"{prog}: error: {e}\n")
    except ValueError as e:
        if args.command != "aot":
            raise
        parser.exit(2, f"{prog}: error: {e}\n")
    errors = _all_failed(result)
    if errors:
        parser.exit(1, f"{prog}: error: every measurement failed; the first: {errors[0]}\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
