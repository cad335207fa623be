"""Weight-only quantization of the projection kernels: int8 (and fp8 e4m3) storage with one f32
scale per output channel, and the matmul that reads the 1-byte weights and scales after the dot.

Symmetric per-output-channel scheme (as LLM.int8's weight half, AWQ/GPTQ's storage and
XLA/TPU's int8 serving recipes): for a kernel `[*in, *out]`, `scale[o] = max|w[:, o]| / QMAX`
over the contracted axes and `q = round(w / scale)` (int8, in [-127, 127]) or `w / scale` cast to
e4m3 (`QMAX` 448, its largest finite value). The scale keeps the kernel's rank with the
contracted axes of size 1 (`[1, *out]`, `[L, 1, *out]` for stacked layers), so which axes were
contracted is read off the two shapes.

`quantized_matmul` is the kernel, `quantized_matmul_reference` its plain reference (dequantize the
whole weight, then one f32 dot). Since `x @ (q * s) = (x @ q) * s` for a per-output-channel s, the
kernel applies the scale once to the `[M, N]` result. How it reads the weights depends on the
backend: XLA:GPU and XLA:TPU fuse an operand's convert into the GEMM, so the 1-byte weights are
what they read from memory; XLA:CPU turns `dot(x, convert(q))` into a separate convert that writes
the whole f32 weight first (more traffic than f32 weights alone). For few rows (decode: M = batch)
on CPU the kernel therefore walks the contraction in blocks of `block_k` rows: each block is
converted into a small f32 tile that stays in cache and is multiplied at once, so main memory
sees the 1-byte weights once. fp8 on CPU is emulated (converted to f32 like int8); on Hopper GPUs
and TPUs the same convert fuses into the GEMM.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vishwamai import validate
from vishwamai.kernels.target import backend

#: `ModelConfig.weight_quant` values: no quantization, int8, fp8 (e4m3fn).
WEIGHT_QUANTS = ("none", "int8", "fp8")
STORAGE_DTYPES = {"int8": jnp.int8, "fp8": jnp.float8_e4m3fn}
#: The largest stored magnitude: symmetric int8 uses [-127, 127]; e4m3fn's largest finite is 448.
QMAX = {"int8": 127.0, "fp8": 448.0}
#: Rows of `x` up to which the CPU kernel walks the contraction in blocks (decode batches).
BLOCKED_MAX_ROWS = 64
#: Bytes of one dequantized f32 tile the CPU kernel aims for (inside a core's L2) ...
TILE_BYTES = 1 << 18
#: ... unless that needs more loop trips than this (each trip costs a few microseconds).
MAX_TRIPS = 64


def _check_mode(mode: str) -> str:
    return validate.one_of("mode", mode, tuple(STORAGE_DTYPES))


def quantize_weight(w, in_axes, mode: str = "int8"):
    """Per-output-channel symmetric quantization of one kernel.

    Args:
      w: float kernel `[*lead, *in, *out]`.
      in_axes: the contracted axes (ints), e.g. `(0,)` for `[D, N, H]`, `(0, 1)` for `[N, H, D]`.
      mode: 'int8' or 'fp8' (e4m3fn).
    Returns:
      `(q, scale)`: `q` of `w`'s shape in int8 / float8_e4m3fn, `scale` f32 of `w`'s rank with
      the `in_axes` of size 1. A channel of zeros gets scale 1 (and zeros).
    """
    mode = _check_mode(mode)
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        validate.fail("w", f"<array of dtype {w.dtype}>", "a floating-point kernel",
                      type_error=True)
    in_axes = tuple(int(a) % w.ndim for a in in_axes)
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=in_axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / QMAX[mode], 1.0).astype(jnp.float32)
    if mode == "int8":
        q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    else:
        q = jnp.clip(w32 / scale, -QMAX[mode], QMAX[mode]).astype(jnp.float8_e4m3fn)
    return q, scale


def contracted_axes(q_shape, scale_shape) -> tuple[int, ...]:
    """The axes a scale of `scale_shape` was reduced over (size 1 there, not in the kernel)."""
    if len(q_shape) != len(scale_shape):
        raise validate.InputError(f"scale must have the kernel's rank {len(q_shape)} (contracted "
                                  f"axes of size 1); got shape {list(scale_shape)} for a kernel "
                                  f"{list(q_shape)}")
    return tuple(i for i, (a, b) in enumerate(zip(q_shape, scale_shape)) if b == 1 and a != 1)


def dequantize_weight(q, scale, dtype=jnp.float32):
    """`q * scale` in `dtype`: the weight the quantized one stands for."""
    return (q.astype(jnp.float32) * scale).astype(dtype)


def quantized_matmul_reference(x_MK, q_KN, scale_N, out_dtype=jnp.float32):
    """Plain reference: dequantize the whole `[K, N]` weight, then one f32 dot."""
    w = dequantize_weight(q_KN, scale_N.reshape(1, -1))
    return (x_MK.astype(jnp.float32) @ w).astype(out_dtype)


def _block_rows(K: int, N: int) -> int:
    """Rows per tile: the largest divisor of K whose `[rows, N]` f32 tile fits `TILE_BYTES`,
    raised to the smallest divisor that keeps the trips at most `MAX_TRIPS`."""
    fits = max(d for d in range(1, K + 1) if K % d == 0 and (d == 1 or 4 * d * N <= TILE_BYTES))
    need = -(-K // MAX_TRIPS)
    return fits if fits >= need else min(d for d in range(need, K + 1) if K % d == 0)


def quantized_matmul(x_MK, q_KN, scale_N, *, out_dtype=jnp.float32, blocked: bool | None = None,
                     block_k: int | None = None):
    """`x @ (q * scale)` with the weights read as stored (1 byte) and the scale applied after.

    Args:
      x_MK: `[M, K]` activations (any float dtype; computed in `out_dtype`).
      q_KN: `[K, N]` int8 or float8_e4m3fn weights.
      scale_N: `[N]` (or `[1, N]`) f32 per-output-channel scales.
      out_dtype: dtype of the dot and the result.
      blocked: walk the contraction in `block_k`-row tiles (default: on CPU for
        `M <= BLOCKED_MAX_ROWS`, the platform being `kernels.target.backend()`; see the module
        docstring); False: one dot of the converted
        weight (what GPU/TPU compilers fuse).
      block_k: rows of q per tile (default: `TILE_BYTES` of f32, a divisor of K).
    Returns:
      `[M, N]` in `out_dtype`.
    """
    M, K = x_MK.shape
    Kq, N = q_KN.shape
    if K != Kq:
        raise validate.InputError(f"x_MK has K={K} columns but q_KN has {Kq} rows")
    if q_KN.dtype not in (jnp.int8, jnp.float8_e4m3fn):
        validate.fail("q_KN", f"<array of dtype {q_KN.dtype}>", "int8 or float8_e4m3fn",
                      type_error=True)
    scale_1N = jnp.reshape(scale_N, (1, N)).astype(out_dtype)
    x = x_MK.astype(out_dtype)
    if blocked is None:
        blocked = backend() == "cpu" and M <= BLOCKED_MAX_ROWS
    if not blocked:
        return (x @ q_KN.astype(out_dtype)) * scale_1N
    bk = _block_rows(K, N) if block_k is None else validate.positive_int("block_k", block_k)
    if K % bk:
        raise validate.InputError(f"block_k={bk} must divide K={K}")
    steps = K // bk
    if steps == 1:
        return (x @ q_KN.astype(out_dtype)) * scale_1N
    # fp8 travels through the loop as its bytes (uint8): XLA:CPU has no fp8 arithmetic and,
    # handed an fp8 operand, converts the whole kernel before the loop; bitcast back per tile.
    fp8 = q_KN.dtype == jnp.float8_e4m3fn
    q_SbN = (jax.lax.bitcast_convert_type(q_KN, jnp.uint8) if fp8 else q_KN).reshape(steps, bk, N)
    x_SMb = jnp.moveaxis(x.reshape(M, steps, bk), 1, 0)

    def body(acc_MN, xq):
        x_Mb, q_bN = xq
        if fp8:
            q_bN = jax.lax.bitcast_convert_type(q_bN, jnp.float8_e4m3fn)
        return acc_MN + x_Mb @ q_bN.astype(out_dtype), None

    acc, _ = jax.lax.scan(body, jnp.zeros((M, N), out_dtype), (x_SMb, q_SbN))
    return acc * scale_1N


def quantized_nbytes(shape, mode: str = "int8") -> dict:
    """Bytes of one kernel `[K, N]` stored quantized: 1-byte data + N f32 scales."""
    _check_mode(mode)
    K, N = shape
    return {"data": math.prod(shape), "scales": 4 * N, "total": math.prod(shape) + 4 * N}
