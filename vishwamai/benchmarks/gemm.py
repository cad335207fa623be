"""GEMM throughput: bf16 against fp8 (`fp8_gemm_optimized`), and whether XLA used a native fp8 GEMM.

Variants, each `[M, K] @ [K, N]` from bf16 operands to a bf16 result:

- ``bf16``: `a @ b`, the baseline.
- ``fp8_tensor`` / ``fp8_row`` / ``fp8_block``: `fp8_gemm_optimized` with that scaling, so the
  time includes quantising both operands (amax, scale, cast), as the model's fp8 layers pay it.
- ``fp8_gemm``: the GEMM alone on operands quantised beforehand (per-tensor scales), the upper
  bound fp8 can reach.

For each it records the compile time (apart), median/min/p10/p90 of warm runs, TFLOP/s at
2*M*N*K FLOPs, XLA's own FLOP count, and which GEMM the compiled HLO calls: on NVIDIA Hopper a
native fp8 GEMM is the `__cublas$lt$matmul$f8` custom call; on CPU (and TPUs without fp8) the
fp8 operands are converted and multiplied in a wider type, so fp8 shows no speed-up there.

    python -m vishwamai.bench gemm --out book/results/gemm_h100.json      # via the bench CLI
    python -m vishwamai.benchmarks.gemm --sizes 256 512 --out gemm.json    # standalone
"""
from __future__ import annotations

import argparse
import json
import math
import re

import jax
import jax.numpy as jnp

from vishwamai import validate
from vishwamai.measure import CompiledStats, compile_time, env_info, is_oom, time_fn
from vishwamai.kernels.fp8 import fp8_gemm_optimized, quantize_fp8, scaled_fp8_matmul

VARIANTS = ("bf16", "fp8_tensor", "fp8_row", "fp8_block", "fp8_gemm")
DEFAULT_SIZES = {"cpu": (256, 512, 1024)}
ACCELERATOR_SIZES = (1024, 2048, 4096, 8192)
NATIVE_FP8_MARKER = "__cublas$lt$matmul$f8"
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


def default_sizes(backend: str | None = None) -> tuple[int, ...]:
    """Square sizes M = K = N to sweep: small on CPU, up to 8192 on accelerators."""
    return DEFAULT_SIZES.get(backend or jax.default_backend(), ACCELERATOR_SIZES)


def _variant_fn(variant: str, block_size: int):
    """(jitted function, how to build its arguments from bf16 a, b)."""
    if variant == "bf16":
        return jax.jit(lambda a, b: a @ b), lambda a, b: (a, b)
    if variant.startswith("fp8_") and variant[4:] in ("tensor", "row", "block"):
        scaling = variant[4:]
        fn = jax.jit(lambda a, b: fp8_gemm_optimized(a, b, scaling=scaling, block_size=block_size))
        return fn, lambda a, b: (a, b)
    if variant == "fp8_gemm":
        quant = jax.jit(lambda x: quantize_fp8(x, "tensor"))
        fn = jax.jit(lambda qa, sa, qb, sb: scaled_fp8_matmul(qa, sa, qb, sb,
                                                              out_dtype=jnp.bfloat16))
        return fn, lambda a, b: (*quant(a), *quant(b))
    raise ValueError(f"variant={variant!r} is not known; accepted: {VARIANTS}")


def gemm_kind(hlo_text: str) -> dict:
    """What the compiled HLO multiplies with: its custom-call targets and a native-fp8 flag."""
    targets = sorted(set(_CUSTOM_CALL.findall(hlo_text)))
    return {"native_fp8_gemm": NATIVE_FP8_MARKER in hlo_text, "custom_calls": targets}


def _xla_flops(compiled) -> float | None:
    flops = CompiledStats.of(compiled).flops
    return None if math.isnan(flops) else flops


def measure(size: int | tuple[int, int, int], variant: str, *, block_size: int = 128,
            warmup: int = 2, repeats: int = 5, seed: int = 0) -> dict:
    """One row: times `variant` at `size` (an int for M = K = N, or (M, K, N))."""
    m, k, n = (size, size, size) if isinstance(size, int) else size
    row = {"variant": variant, "m": m, "k": k, "n": n, "flops": 2 * m * k * n}
    try:
        ka, kb = jax.random.split(jax.random.PRNGKey(seed))
        a = jax.random.normal(ka, (m, k), jnp.bfloat16)
        b = jax.random.normal(kb, (k, n), jnp.bfloat16)
        fn, make_args = _variant_fn(variant, block_size)
        args = make_args(a, b)
        compiled, t_compile = compile_time(fn, *args)
        row.update(gemm_kind(compiled.as_text()))
        row["xla_flops"] = _xla_flops(compiled)
        timing = time_fn(compiled, *args, warmup=warmup, repeats=repeats)
        row.update(compile_s=t_compile, **timing)
        row["tflops"] = row["flops"] / timing["median_s"] / 1e12
    except Exception as exc:  # a failed size becomes a row saying why, the sweep goes on
        row["error"] = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:500]
    return row


def _speedups(rows: list[dict]) -> list[dict]:
    """TFLOP/s of each fp8 variant over bf16 at the same shape."""
    base = {(r["m"], r["k"], r["n"]): r.get("tflops") for r in rows if r["variant"] == "bf16"}
    out = []
    for r in rows:
        b = base.get((r["m"], r["k"], r["n"]))
        if r["variant"] != "bf16" and b and r.get("tflops"):
            out.append({"variant": r["variant"], "m": r["m"], "k": r["k"], "n": r["n"],
                        "speedup_vs_bf16": r["tflops"] / b})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds this benchmark's options (shared by `python -m vishwamai.bench gemm`)."""
    positive = validate.cli_type(validate.positive_int, int, what="an int")
    parser.add_argument("--sizes", type=positive, nargs="+", default=None,
                        help="square sizes M=K=N (default: 256 512 1024 on CPU, "
                             "1024..8192 on accelerators)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="what to time (default: all)")
    parser.add_argument("--block-size", type=positive, default=128, help="tile edge for fp8_block")
    parser.add_argument("--warmup", type=positive, default=2, help="warm calls before timing")
    parser.add_argument("--repeats", type=positive, default=5, help="timed calls per row")
    parser.add_argument("--out", type=validate.cli_type(validate.writable_file, str),
                        default=None, help="write the result JSON here")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Runs the sweep; returns the result (and writes it to `args.out` when given)."""
    sizes = tuple(validate.int_list("sizes", list(args.sizes))) if args.sizes else default_sizes()
    for name in ("block_size", "warmup", "repeats"):
        validate.positive_int(name, getattr(args, name))
    if args.out:
        validate.writable_file("out", args.out)
    rows = [measure(s, v, block_size=args.block_size, warmup=args.warmup, repeats=args.repeats)
            for s in sizes for v in args.variants]
    result = {
        "benchmark": "gemm",
        "env": env_info(),
        "config": {"sizes": list(sizes), "variants": list(args.variants),
                   "block_size": args.block_size, "warmup": args.warmup,
                   "repeats": args.repeats, "input_dtype": "bfloat16",
                   "output_dtype": "bfloat16",
                   "flops_convention": "2*M*N*K per GEMM; quantisation not counted"},
        "rows": rows,
        "speedups": _speedups(rows),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_result(result: dict) -> str:
    """A plain-text table of `main`'s result."""
    lines = [f"{result['env']['device_kind']} ({result['env']['backend']})",
             f"{'variant':<11} {'M=K=N':>7} {'TFLOP/s':>9} {'compile s':>9}  native fp8"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['variant']:<11} {r['m']:>7}  {r['error'][:60]}")
        else:
            lines.append(f"{r['variant']:<11} {r['m']:>7} {r['tflops']:>9.3f} "
                         f"{r['compile_s']:>9.2f}  {r['native_fp8_gemm']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_result(main(add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
                       .parse_args())))
