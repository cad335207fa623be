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
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai import validate
from vishwamai.benchmarks.harness import save_results
from vishwamai.measure import CompiledStats, compile_time, env_info, is_oom, time_fn
from vishwamai.kernels import attention as attn

# Memory is read from the compiler (nothing runs), so it sweeps further than time does.
DEFAULT_SEQ_LENS = {"cpu": (256, 512, 1024, 2048, 4096, 8192)}
ACCELERATOR_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_TIME_MAX = {"cpu": 4096}          # reference fwd+bwd at T=8192 needs ~10 GB on CPU
ACCELERATOR_TIME_MAX = 16384
SLOPE_RANGE = (1024, 8192)                # the T range the log-log slopes are fitted over
# Correctness bound per input dtype, as max|err| <= tol * max(1, max|reference|) for the output
# and each gradient (the same bounds as tests/test_attention_kernels.py): f32 sums reordered by
# the tiles; bf16 two ulps (2**-7) of the final rounding, all accumulation being f32.
TOLERANCES = {"float32": 2e-5, "bfloat16": 1.6e-2, "float16": 2e-3}


def default_seq_lens(backend: str | None = None) -> tuple[int, ...]:
    return DEFAULT_SEQ_LENS.get(backend or jax.default_backend(), ACCELERATOR_SEQ_LENS)


def default_dtype(backend: str | None = None) -> str:
    """f32 on CPU (no bf16 hardware, and the acceptance figures are f32); bf16 elsewhere."""
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


def default_implementations(backend: str | None = None) -> tuple[str, ...]:
    """Every concrete implementation this backend runs (not 'auto')."""
    return tuple(i for i in attn.available_implementations(backend) if i != "auto")


def make_inputs(B: int, T: int, N: int, K: int, H: int, dtype="float32", seed: int = 0):
    """Random q `[B, T, N, H]`, k, v `[B, T, K, H]` (unit normal) in `dtype`.

    Drawn with numpy: `jax.random` would compile a program for every shape.
    """
    r = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    return tuple(jnp.asarray(r.standard_normal(s, dtype=np.float32), dt)
                 for s in ((B, T, N, H), (B, T, K, H), (B, T, K, H)))


def _op(impl: str, causal: bool, block_q: int | None, block_k: int | None):
    if impl == "flash":
        return functools.partial(attn.flash_attention, causal=causal, block_q=block_q,
                                 block_k=block_k)
    return functools.partial(attn.attention, causal=causal, implementation=impl)


def fwd_bwd_fn(impl: str, *, causal: bool = True, block_q: int | None = None,
               block_k: int | None = None):
    """jitted (q, k, v) -> (dq, dk, dv) of `sum(attention(q, k, v))`, the function measured."""
    op = _op(impl, causal, block_q, block_k)
    return jax.jit(jax.grad(lambda q, k, v: op(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))


def fwd_fn(impl: str, *, causal: bool = True, block_q: int | None = None,
           block_k: int | None = None):
    return jax.jit(_op(impl, causal, block_q, block_k))


def _error_text(exc: BaseException) -> str:
    return "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]


def seed_estimates(B: int, N: int, T: int) -> dict:
    """The seed's `analyze_memory_efficiency` attention terms (bytes), formulas unchanged:
    scores `B*N*T*T*2` (one bf16 matrix) and "flash" `B*N*T*2` (one bf16 value per row)."""
    return {"seed_attention_bytes": B * N * T * T * 2, "seed_flash_bytes": B * N * T * 2}


def memory_row(impl: str, T: int, *, B: int = 1, N: int = 8, K: int | None = None,
               H: int = 64, dtype: str = "float32", causal: bool = True,
               block_q: int | None = None, block_k: int | None = None,
               forward_too: bool = True) -> dict:
    """Compiled scratch bytes of forward+backward and (`forward_too`) of the forward alone.

    Compiles only; nothing runs, so lengths whose reference would not fit still give a figure.
    """
    K = N if K is None else K
    row = {"impl": impl, "T": T, "B": B, "N": N, "K": K, "H": H, "dtype": dtype,
           "causal": causal, **seed_estimates(B, N, T)}
    q = jax.ShapeDtypeStruct((B, T, N, H), jnp.dtype(dtype))
    kv = jax.ShapeDtypeStruct((B, T, K, H), jnp.dtype(dtype))
    try:
        compiled, t = compile_time(fwd_bwd_fn(impl, causal=causal, block_q=block_q,
                                              block_k=block_k), q, kv, kv)
        mem = CompiledStats.of(compiled)
        row.update(temp_bytes=int(mem.temp_bytes), argument_bytes=int(mem.argument_bytes),
                   output_bytes=int(mem.output_bytes), compile_s=t)
        if forward_too:
            compiled, _ = compile_time(fwd_fn(impl, causal=causal, block_q=block_q,
                                              block_k=block_k), q, kv, kv)
            row["temp_bytes_fwd"] = int(CompiledStats.of(compiled).temp_bytes)
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a failed point is a row, the sweep goes on
        row.update(status="oom" if is_oom(exc) else "error", error=_error_text(exc))
    return row


def time_row(impl: str, T: int, *, B: int = 1, N: int = 8, K: int | None = None, H: int = 64,
             dtype: str = "float32", causal: bool = True, block_q: int | None = None,
             block_k: int | None = None, warmup: int = 1, repeats: int = 3) -> dict:
    """Forward+backward wall time at one length (compile time apart)."""
    K = N if K is None else K
    row = {"impl": impl, "T": T, "B": B, "N": N, "K": K, "H": H, "dtype": dtype,
           "causal": causal}
    try:
        q, k, v = make_inputs(B, T, N, K, H, dtype)
        compiled, t = compile_time(fwd_bwd_fn(impl, causal=causal, block_q=block_q,
                                              block_k=block_k), q, k, v)
        timing = time_fn(compiled, q, k, v, warmup=warmup, repeats=repeats)
        row.update(compile_s=t, **timing, status="ok")
        del compiled
    except Exception as exc:  # noqa: BLE001
        row.update(status="oom" if is_oom(exc) else "error", error=_error_text(exc))
    return row


def correctness_rows(impls=None, *, B: int = 2, T: int = 200, N: int = 8, K: int = 2,
                     H: int = 32, dtypes=("float32", "bfloat16"), causal: bool = True,
                     interpret_pallas: bool = False) -> list[dict]:
    """Max |kernel - f32 reference| of the output and of dq, dk, dv, per implementation/dtype.

    Gradients are of `sum(out * w)` with a fixed non-uniform `w` over H (a plain sum would make
    dq vanish: softmax rows sum to one). `interpret_pallas` adds 'pallas_tpu' through Pallas'
    TPU interpreter on a non-TPU backend (slow; small shapes only).
    """
    impls = list(default_implementations() if impls is None else impls)
    if interpret_pallas and "pallas_tpu" not in impls:
        impls.append("pallas_tpu (interpret)")
    w = jnp.cos(jnp.arange(H, dtype=jnp.float32))

    def out_and_grads(op, q, k, v):
        out, vjp = jax.vjp(op, q, k, v)
        return (out, *vjp((w * jnp.ones(out.shape, jnp.float32)).astype(out.dtype)))

    rows = []
    for dtype in dtypes:
        q, k, v = make_inputs(B, T, N, K, H, dtype)
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        ref = jax.jit(lambda *a: out_and_grads(
            functools.partial(attn.reference_attention, causal=causal), *a))(*f32)
        for impl in impls:
            row = {"impl": impl, "dtype": dtype, "B": B, "T": T, "N": N, "K": K, "H": H,
                   "causal": causal}
            if impl == "pallas_tpu (interpret)":
                op = functools.partial(attn.pallas_tpu_attention, causal=causal, interpret=True)
            else:
                op = functools.partial(attn.attention, causal=causal, implementation=impl)
            try:
                got = jax.jit(lambda *a: out_and_grads(op, *a))(q, k, v)
                rel = []
                for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
                    row[f"{name}_err"] = float(jnp.abs(g.astype(jnp.float32) - r).max())
                    row[f"{name}_max"] = float(jnp.abs(r).max())
                    rel.append(row[f"{name}_err"] / max(1.0, row[f"{name}_max"]))
                row["worst_scaled_err"] = max(rel)
                row["tolerance"] = TOLERANCES[dtype]
                row["within_tolerance"] = max(rel) <= TOLERANCES[dtype]
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - e.g. cuDNN refusing f32
                row.update(status="error", error=_error_text(exc))
            rows.append(row)
    return rows


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
