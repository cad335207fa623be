"""One measurement each of the attention benchmark: the sweep's default lengths, dtype and
implementations per backend, the inputs, the jitted forward and forward+backward functions,
and the rows they produce (compiled memory against T with the seed's estimates beside it,
fwd+bwd time, and correctness of the output and gradients against the f32 reference within
`TOLERANCES`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai.measure import CompiledStats, compile_time, is_oom, time_fn
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
