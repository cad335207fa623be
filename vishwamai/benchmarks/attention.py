"""Attention kernels measured: correctness, compiled memory and fwd+bwd time against T.

Every implementation `vishwamai.kernels.attention.attention` can run on this backend is compared
on the same inputs `q [B, T, N, H]`, `k, v [B, T, K, H]` (self-attention, causal by default):

- **correctness**: max |error| of the output and of dq, dk, dv against the f32 reference;
- **memory**: `temp_size_in_bytes` from `jit(grad).lower(...).compile().memory_analysis()`,
  the scratch XLA allocates for one forward+backward (the gradient of `sum(out)` w.r.t.
  q, k, v), beside the forward-only figure, with the log-log slope of each against T;
- **time**: forward+backward wall time (`vishwamai.measure.time_fn`: compile apart, warm-up, median of
  repeats); a length that runs out of memory becomes a row saying so.

The seed's estimates (`attention_memory = B*N*T*T*2`, flash `B*N*T*2` bytes) are reported
beside the measured bytes.

    python -m vishwamai.bench attention --out book/results/attention_h100.json   # via the CLI
    python -m vishwamai.benchmarks.attention --out attention.json                 # standalone
    python -m vishwamai.benchmarks.attention --tune --seq-lens 4096               # block sizes
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from vishwamai import validate
from vishwamai.benchmarks.harness import save_results
from vishwamai.measure import env_info
from vishwamai.kernels import attention as attn
from vishwamai.benchmarks.attention_rows import (  # noqa: F401
    ACCELERATOR_SEQ_LENS, ACCELERATOR_TIME_MAX, DEFAULT_SEQ_LENS, DEFAULT_TIME_MAX, SLOPE_RANGE,
    TOLERANCES, _error_text, _op, correctness_rows, default_dtype, default_implementations,
    default_seq_lens, fwd_bwd_fn, fwd_fn, make_inputs, memory_row, seed_estimates, time_row)

def loglog_slope(xs, ys, lo: float | None = None, hi: float | None = None) -> float:
    """Least-squares slope of log(y) against log(x), over lo <= x <= hi."""
    pts = [(x, y) for x, y in zip(xs, ys)
           if y and y > 0 and (lo is None or x >= lo) and (hi is None or x <= hi)]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log(np.array(pts, dtype=float)).T
    return float(np.polyfit(x, y, 1)[0])


def _at(rows, impl, T, key):
    for r in rows:
        if r["impl"] == impl and r["T"] == T and r.get("status") == "ok":
            return r.get(key)
    return None


def summarize(memory: list[dict], timing: list[dict], at_T: int = 4096) -> dict:
    """Slopes over `SLOPE_RANGE`, and reference/flash memory and flash/xla time at `at_T`."""
    out = {"slope_range": list(SLOPE_RANGE), "at_T": at_T, "slopes_fwd_bwd": {},
           "slopes_fwd": {}}
    for impl in sorted({r["impl"] for r in memory}):
        ok = [r for r in memory if r["impl"] == impl and r.get("status") == "ok"]
        out["slopes_fwd_bwd"][impl] = loglog_slope([r["T"] for r in ok],
                                                   [r["temp_bytes"] for r in ok], *SLOPE_RANGE)
        out["slopes_fwd"][impl] = loglog_slope([r["T"] for r in ok],
                                               [r.get("temp_bytes_fwd") for r in ok], *SLOPE_RANGE)
    ref_b, fl_b = _at(memory, "reference", at_T, "temp_bytes"), _at(memory, "flash", at_T, "temp_bytes")
    out["reference_over_flash_bytes"] = ref_b / fl_b if ref_b and fl_b else None
    fl_t, xla_t = _at(timing, "flash", at_T, "median_s"), _at(timing, "xla", at_T, "median_s")
    out["flash_over_xla_time"] = fl_t / xla_t if fl_t and xla_t else None
    return out


def tune_blocks(T: int = 4096, candidates=(128, 256, 512), *, B: int = 1, N: int = 8,
                H: int = 64, dtype: str = "float32", causal: bool = True,
                repeats: int = 3) -> list[dict]:
    """Flash fwd+bwd time and scratch bytes for each (block_q, block_k) in `candidates`^2."""
    rows = []
    for bq in candidates:
        for bk in candidates:
            r = time_row("flash", T, B=B, N=N, H=H, dtype=dtype, causal=causal, block_q=bq,
                         block_k=bk, repeats=repeats)
            m = memory_row("flash", T, B=B, N=N, H=H, dtype=dtype, causal=causal, block_q=bq,
                           block_k=bk, forward_too=False)
            rows.append({**r, "block_q": bq, "block_k": bk, "temp_bytes": m.get("temp_bytes")})
    return rows


def run(*, seq_lens=None, time_seq_lens=None, impls=None, B: int = 1, N: int = 8,
        K: int | None = None, H: int = 64, dtype: str | None = None, causal: bool = True,
        block_q: int | None = None, block_k: int | None = None, warmup: int = 1,
        repeats: int = 3, correctness: bool = True, at_T: int = 4096) -> dict:
    """The whole benchmark as one JSON-able dict (`env` says where it ran)."""
    backend = jax.default_backend()
    seq_lens = tuple(seq_lens or default_seq_lens(backend))
    if time_seq_lens is None:
        t_max = DEFAULT_TIME_MAX.get(backend, ACCELERATOR_TIME_MAX)
        time_seq_lens = tuple(T for T in seq_lens if T <= t_max)
    impls = tuple(impls or default_implementations(backend))
    dtype = dtype or default_dtype(backend)
    shape = dict(B=B, N=N, K=K, H=H, dtype=dtype, causal=causal)
    blocks = dict(block_q=block_q, block_k=block_k)
    memory = [memory_row(i, T, **shape, **blocks) for T in seq_lens for i in impls]
    timing = []
    for T in time_seq_lens:
        for i in impls:
            timing.append(time_row(i, T, **shape, **blocks, warmup=warmup, repeats=repeats))
    result = {
        "benchmark": "attention",
        "env": env_info(),
        "config": {"seq_lens": list(seq_lens), "time_seq_lens": list(time_seq_lens),
                   "impls": list(impls), **shape, "K": N if K is None else K,
                   "block_q": block_q, "block_k": block_k,
                   "default_blocks": attn.DEFAULT_BLOCKS.get(backend),
                   "warmup": warmup, "repeats": repeats,
                   "measured": "grad of sum(attention(q, k, v)) w.r.t. q, k, v"},
        "memory": memory,
        "time": timing,
        "summary": summarize(memory, timing, at_T),
    }
    if correctness:
        result["correctness"] = correctness_rows(impls)
    return result


_positive_int = validate.cli_type(validate.positive_int, int, what="an int")


def _implementation(name: str) -> str:
    here = attn.available_implementations()
    if name not in here:
        why = "unknown" if name not in attn.IMPLEMENTATIONS else \
            f"cannot run on backend {jax.default_backend()!r}"
        raise argparse.ArgumentTypeError(f"implementation {name!r} {why}; available here: {here}")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds this benchmark's options (shared by `python -m vishwamai.bench attention`)."""
    parser.add_argument("--seq-lens", type=_positive_int, nargs="+", default=None,
                        help="T for the memory sweep (default: 256..8192 on CPU, "
                             "512..16384 on accelerators)")
    parser.add_argument("--time-seq-lens", type=_positive_int, nargs="+", default=None,
                        help="T for the timing sweep (default: the memory ones up to 4096 on "
                             "CPU, 16384 on accelerators)")
    parser.add_argument("--impls", type=_implementation, nargs="+", default=None,
                        help="implementations (default: all this backend runs)")
    parser.add_argument("--batch", type=_positive_int, default=1, help="B")
    parser.add_argument("--heads", type=_positive_int, default=8, help="N query heads")
    parser.add_argument("--kv-heads", type=_positive_int, default=None, help="K key/value heads (default N)")
    parser.add_argument("--head-dim", type=_positive_int, default=64, help="H")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="input dtype (default: float32 on CPU, bfloat16 elsewhere)")
    parser.add_argument("--no-causal", dest="causal", action="store_false",
                        help="full (bidirectional) attention instead of causal")
    parser.add_argument("--block-q", type=_positive_int, default=None, help="flash query block")
    parser.add_argument("--block-k", type=_positive_int, default=None, help="flash key block")
    parser.add_argument("--warmup", type=_positive_int, default=1, help="warm calls before timing")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed calls per row")
    parser.add_argument("--no-correctness", dest="correctness", action="store_false",
                        help="skip the error table")
    parser.add_argument("--tune", action="store_true",
                        help="instead: time flash for block sizes 128/256/512 at --seq-lens")
    parser.add_argument("--out", type=validate.cli_type(validate.writable_file, str), default=None,
                        help="write the result JSON here")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Runs the benchmark for parsed `args`; returns the result (written to `args.out`)."""
    for name in ("seq_lens", "time_seq_lens"):
        if getattr(args, name):
            validate.int_list(name, list(getattr(args, name)))
    if args.out:
        validate.writable_file("out", args.out)
    impls = getattr(args, "impls", None)
    if impls:
        here = attn.available_implementations()
        missing = [i for i in impls if i not in here]
        if missing:
            raise validate.InputError(f"implementations {missing} cannot run on backend "
                             f"{jax.default_backend()!r}; available here: {here}")
    if args.tune:
        rows = []
        for T in args.seq_lens or [4096]:
            rows += tune_blocks(T, B=args.batch, N=args.heads, H=args.head_dim,
                                dtype=args.dtype or default_dtype(), causal=args.causal,
                                repeats=args.repeats)
        result = {"benchmark": "attention_tune", "env": env_info(), "rows": rows}
    else:
        result = run(seq_lens=args.seq_lens, time_seq_lens=args.time_seq_lens, impls=impls,
                     B=args.batch, N=args.heads, K=args.kv_heads, H=args.head_dim,
                     dtype=args.dtype, causal=args.causal, block_q=args.block_q,
                     block_k=args.block_k, warmup=args.warmup, repeats=args.repeats,
                     correctness=args.correctness)
    if args.out:
        save_results(args.out, result)
    return result


def format_result(result: dict) -> str:
    """A plain-text digest of `main`'s result."""
    env = result["env"]
    lines = [f"{env['device_kind']} ({env['backend']}), jax {env['jax']}, {env['date']}"]
    if result["benchmark"] == "attention_tune":
        lines.append(f"{'block_q':>7} {'block_k':>7} {'median s':>9} {'temp MiB':>9}")
        for r in result["rows"]:
            if r.get("status") == "ok":
                lines.append(f"{r['block_q']:>7} {r['block_k']:>7} {r['median_s']:>9.3f} "
                             f"{(r['temp_bytes'] or 0) / 2**20:>9.1f}")
            else:
                lines.append(f"{r['block_q']:>7} {r['block_k']:>7}  {r.get('error')}")
        return "\n".join(lines)
    lines.append(f"{'impl':<11} {'T':>6} {'temp MiB (fwd+bwd)':>19} {'fwd MiB':>9}")
    for r in result["memory"]:
        if r["status"] == "ok":
            lines.append(f"{r['impl']:<11} {r['T']:>6} {r['temp_bytes'] / 2**20:>19.1f} "
                         f"{r.get('temp_bytes_fwd', float('nan')) / 2**20:>9.1f}")
        else:
            lines.append(f"{r['impl']:<11} {r['T']:>6}  {r['error'][:60]}")
    lines.append(f"{'impl':<11} {'T':>6} {'fwd+bwd s':>10} {'compile s':>10}")
    for r in result["time"]:
        if r["status"] == "ok":
            lines.append(f"{r['impl']:<11} {r['T']:>6} {r['median_s']:>10.4f} "
                         f"{r['compile_s']:>10.2f}")
        else:
            lines.append(f"{r['impl']:<11} {r['T']:>6}  {r['error'][:60]}")
    s = result["summary"]
    lines.append(f"log-log slope of fwd+bwd temp bytes over T={s['slope_range']}: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in s["slopes_fwd_bwd"].items()
                             if v == v))
    if s.get("reference_over_flash_bytes"):
        lines.append(f"reference / flash temp bytes at T={s['at_T']}: "
                     f"{s['reference_over_flash_bytes']:.1f}x")
    if s.get("flash_over_xla_time"):
        lines.append(f"flash / xla fwd+bwd time at T={s['at_T']}: {s['flash_over_xla_time']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    _parser = add_arguments(argparse.ArgumentParser(
        prog="python -m vishwamai.benchmarks.attention", description=__doc__.split("\n")[0]))
    try:
        _result = main(_parser.parse_args(sys.argv[1:]))
    except ValueError as err:
        _parser.error(str(err))
    print(format_result(_result))
