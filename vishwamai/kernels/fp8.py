"""fp8 GEMM: `fp8_gemm_optimized`, its f32 reference and the quantisation helpers.

The GEMM uses the letters M, K, N of BLAS (a `[M, K]` @ b `[K, N]`), not the model's shape
alphabet. The recipe is the standard fp8 one (Micikevicius et al. 2022, "FP8 formats for deep
learning"; NVIDIA Transformer Engine): forward operands in `float8_e4m3fn` (max 448, 3 mantissa
bits), gradients in `float8_e5m2` (max 57344, 2 mantissa bits), products accumulated in f32,
scales from the current amax ("current scaling": no amax history to carry between steps).

Scaling modes (`SCALINGS`):

- ``'tensor'``: one scale per operand. ``'row'``: one scale per row of a (per token) and per
  column of b (per output channel). Neither varies along K, so both factor out of the sum: the
  GEMM is a dot of the fp8 operands themselves with f32 accumulation, `dot(a_fp8, b_fp8) *
  (a_scale * b_scale)` (a scalar, or the outer product `[M, 1] x [1, N]`), the rescale an
  elementwise epilogue. Given fp8 operands, XLA:GPU emits one cuBLASLt fp8 GEMM
  (`__cublas$lt$matmul$f8`, Hopper and newer) for the forward and for each backward product
  (with Triton GEMMs off; with them on, a Triton GEMM of f8 operands), and XLA:TPU a matmul of
  f8 operands. The form cuBLAS documents, `dot(convert(a_fp8) * a_scale, convert(b_fp8) *
  b_scale)`, is rewritten into the same call by XLA:GPU's GemmRewriter only when Triton GEMMs
  are off; with them on, and on TPU, its operands reach the dot converted to f32 (an f32 GEMM
  of fp8 values: fp8 numerics at f32 speed), which is why the kernel does not use it.
- ``'block'``: DeepSeek-V3 tiles (arXiv:2412.19437, sec. 3.3): a in 1 x `block_size` tiles along
  K (per token, per group of channels), b in `block_size` x `block_size` tiles. The scales vary
  along K, so no single BLAS call applies them; this mode is *emulated*: both operands are
  dequantised and multiplied with f32 accumulation (bf16 operands on accelerators, f32 on CPU).
  Because every scale is a power of two (below), dequantised values are exact in bf16 and f32,
  so the emulation gives the numbers a native blockwise fp8 kernel (DeepGEMM) would, up to the
  order of the f32 additions, at bf16 speed rather than fp8 speed.

Non-finite values are handled per scaling group: the amax that sets a tile's scale is taken
over its finite values only, so one NaN or inf costs no other row, column or tile its range. A
NaN stays NaN through the cast and the dot, so it reaches exactly the outputs that read it (its
row of the result for a NaN in `a`, its column for one in `b`) and no others; an inf saturates
to +-max of the fp8 format at its tile's scale (`float8_e4m3fn` has no infinity). Empty
operands (M, N or K = 0) give the empty (or, for K = 0, all-zero) result a matmul gives.

Every scale is a power of two, the smallest with `amax / scale <= fp8 max` (as the MX formats'
E8M0 scales and DeepSeek-V3.1's UE8M0 scales are): dividing by it is exact, so the only error is
the fp8 rounding itself, and values are clipped to the fp8 range before the cast so nothing
overflows to NaN (`float8_e4m3fn` has no infinity; a cast of 480 gives NaN).

Training: a `jax.custom_vjp` quantises the output gradient to `float8_e5m2` (same scaling mode)
and computes dA = dY . B^T and dB = A^T . dY with fp8 operands. The forward saves its fp8
operands and scales for this (1 byte per element instead of a and b themselves). Scales are
current rather than delayed (Transformer Engine's amax history): one extra max-reduction per
operand, no state to thread through the train step, and no overflow when an amax jumps.

On CPU, and on TPUs without fp8 matrix units, fp8 is emulated (XLA converts the operands and
multiplies in f32/bf16): the numerics are those of fp8, the speed is not.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from vishwamai import validate
from vishwamai.config import FP8_SCALINGS as SCALINGS
from vishwamai.kernels.target import backend as _target_backend

FP8_E4M3 = jnp.float8_e4m3fn
FP8_E5M2 = jnp.float8_e5m2

_F32 = jnp.float32
_MATMUL_DIMS = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
_F32_MIN_NORMAL_EXP = -126  # keeps a scale of an all-tiny tensor a normal f32 number


def _fp8_max(dtype) -> float:
    return float(jnp.finfo(dtype).max)


def _check_scaling(scaling):
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} is not supported; accepted values: {SCALINGS}")


def _check_block_size(block_size):
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int; got block_size={block_size!r}")


def _check_float(name, dtype):
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float32, bfloat16, float16, ...); got {dtype}")


def pow2_scale(amax, dtype=FP8_E4M3):
    """Smallest power of two `s` with `amax / s <= max(dtype)`, elementwise.

    Where `amax` is 0 or not finite the scale is 1 (an all-zero tile stays zero; a tile holding
    inf saturates to +-max instead of turning into NaN).
    """
    amax = jnp.asarray(amax, _F32)
    ok = (amax > 0) & jnp.isfinite(amax)
    ratio = jnp.where(ok, amax, 1.0) / _fp8_max(dtype)
    mant, exp = jnp.frexp(ratio)  # ratio = mant * 2**exp, mant in [0.5, 1)
    exp = jnp.where(mant == 0.5, exp - 1, exp)  # ratio already a power of two
    exp = jnp.maximum(exp, _F32_MIN_NORMAL_EXP)
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(ratio), exp), 1.0)


def _pad_to(x, axis, multiple):
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad)


def _amax(x, scaling, axis, block_size, square_blocks):
    """Per-tile max |x| over the tile's *finite* values, for the tiling `scaling` names; shapes
    as `quantize_fp8` documents. An empty tile (a zero-sized axis) has amax 0.

    Non-finite values are left out of the max so they cannot set a tile's scale: a NaN or inf
    entry would otherwise give that tile (under 'tensor' scaling: the whole operand) scale 1,
    and every other value in it would lose its range (underflow or clipping). They are handled
    in `quantize_fp8` instead.
    """
    ax = jnp.abs(x.astype(_F32))
    ax = jnp.where(jnp.isfinite(ax), ax, 0.0)
    if scaling == "tensor":
        return jnp.max(ax, initial=0.0)
    if scaling == "row":
        return jnp.max(ax, axis=axis, keepdims=True, initial=0.0)
    if square_blocks:
        if x.ndim < 2:
            raise ValueError(f"square blocks need a matrix; got shape {x.shape}")
        ax = _pad_to(_pad_to(ax, -2, block_size), -1, block_size)
        *lead, r, c = ax.shape
        ax = ax.reshape(*lead, r // block_size, block_size, c // block_size, block_size)
        return jnp.max(ax, axis=(-3, -1), initial=0.0)
    ax = jnp.moveaxis(_pad_to(ax, axis, block_size), axis, -1)
    ax = ax.reshape(*ax.shape[:-1], ax.shape[-1] // block_size, block_size)
    return jnp.moveaxis(jnp.max(ax, axis=-1, initial=0.0), -1, axis)


def expand_scale(scale, shape, block_size=128):
    """Broadcasts a per-tile `scale` back to `shape` (repeating each tile's scale over its tile)."""
    scale = jnp.asarray(scale)
    if scale.ndim == 0:
        return scale
    for d, (s, n) in enumerate(zip(scale.shape, shape)):
        if s not in (1, n):
            scale = lax.slice_in_dim(jnp.repeat(scale, block_size, axis=d), 0, n, axis=d)
    return scale


def quantize_fp8(x, scaling="tensor", *, axis=-1, block_size=128, square_blocks=False,
                 dtype=FP8_E4M3):
    """Quantises `x` to fp8 with power-of-two amax scales: `x ~= q * expand_scale(scale)`.

    Args:
      x: floating array.
      scaling: ``'tensor'`` (one scale), ``'row'`` (one scale per slice along `axis`: for a GEMM
        operand pass its contracting axis, so a `[M, K]` gets one per row, b `[K, N]` with
        `axis=0` one per column) or ``'block'`` (tiles, below).
      axis: the contracting axis, used by ``'row'`` and by 1-D blocks.
      block_size: tile edge for ``'block'``; shapes need not be multiples of it.
      square_blocks: ``'block'`` tiles are `block_size x block_size` over the last two axes if
        True, else `1 x block_size` runs along `axis`.
      dtype: `float8_e4m3fn` (forward operands) or `float8_e5m2` (gradients).

    Returns:
      `(q, scale)`: `q` of `x`'s shape in `dtype`; `scale` f32 of shape `()` (tensor), `x`'s shape
      with `axis` reduced to 1 (row), or one entry per tile (block: `ceil(n / block_size)` along
      each tiled axis).
    """
    x = jnp.asarray(x)
    _check_float("x", x.dtype)
    _check_scaling(scaling)
    _check_block_size(block_size)
    if jnp.dtype(dtype) not in (jnp.dtype(FP8_E4M3), jnp.dtype(FP8_E5M2)):
        raise ValueError(f"dtype must be float8_e4m3fn or float8_e5m2; got {dtype}")
    if x.ndim == 0 and scaling != "tensor":
        raise ValueError(f"scaling={scaling!r} needs an array of rank >= 1; got a scalar")
    axis = axis % max(x.ndim, 1)
    scale = pow2_scale(_amax(x, scaling, axis, block_size, square_blocks), dtype)
    fmax = _fp8_max(dtype)
    y = x.astype(_F32) / expand_scale(scale, x.shape, block_size)
    return _to_fp8(jnp.clip(y, -fmax, fmax), jnp.dtype(dtype)), scale


_FP8_BITS = {jnp.dtype(FP8_E4M3): (3, -6), jnp.dtype(FP8_E5M2): (2, -14)}  # mantissa, min exp


def _to_fp8(y, dtype):
    """f32 in the fp8 range -> fp8, rounded once to nearest even.

    The rounding is done in f32 arithmetic (a power-of-two quantum per value, `jnp.round`,
    which rounds half to even) and the cast then only changes the storage of an exactly
    representable value. A plain cast is not enough on every release: XLA:CPU in jaxlib 0.7
    converts f32 -> fp8 through bf16 when the convert is not fused (7.2504 -> 7.25 -> 7.0
    instead of 7.5), so eager and jitted callers got different fp8 values.
    """
    mant, min_exp = _FP8_BITS[jnp.dtype(dtype)]
    _, e = jnp.frexp(y)                                     # |y| = m * 2**e, m in [0.5, 1)
    quantum = jnp.ldexp(jnp.ones_like(y), jnp.maximum(e - 1, min_exp) - mant)
    return (jnp.round(y / quantum) * quantum).astype(dtype)


def dequantize_fp8(q, scale, *, block_size=128, dtype=_F32):
    """Inverse of `quantize_fp8`: `q * scale` in `dtype`, exact for power-of-two scales."""
    return q.astype(dtype) * expand_scale(scale, q.shape, block_size).astype(dtype)


def _block_compute_dtype():
    # bf16 holds fp8 * 2**k exactly and runs on the matrix units of GPUs/TPUs; the CPU here has
    # no bf16 arithmetic, so it multiplies the same exact values in f32.
    return _F32 if _target_backend() == "cpu" else jnp.bfloat16


def scaled_fp8_matmul(q_a, scale_a, q_b, scale_b, *, out_dtype=_F32):
    """`(q_a * scale_a) @ (q_b * scale_b)` for pre-quantised operands, accumulated in f32.

    The GEMM alone, for operands already in fp8 (weights stored quantised, or a benchmark that
    times the matmul without the quantisation around it).

    Args:
      q_a: `[M, K]` fp8. q_b: `[K, N]` fp8.
      scale_a, scale_b: f32 scalars (per tensor), or `[M, 1]` and `[1, N]` (per row of a, per
        column of b): scales that do not vary along K, so they can stay outside the sum.

    Returns:
      `[M, N]` in `out_dtype`.
    """
    scale_a = jnp.asarray(scale_a, _F32)
    scale_b = jnp.asarray(scale_b, _F32)
    # The dot takes the fp8 operands as they are (the matrix units' fp8 GEMM on GPUs and
    # TPUs; exact f32 products on CPU) and the scales, constant along K, rescale its f32 result.
    out = lax.dot_general(q_a, q_b, _MATMUL_DIMS, preferred_element_type=_F32)
    out = out * scale_a * scale_b
    return out.astype(out_dtype)


def _quantize_operands(x, y, x_dtype, y_dtype, scaling, block_size, y_square):
    """fp8 operands and scales for `x [M, K] @ y [K, N]`, each scaled along its own K."""
    if scaling in ("tensor", "row"):
        qx, sx = quantize_fp8(x, scaling, axis=1, dtype=x_dtype)  # () or [M, 1]
        qy, sy = quantize_fp8(y, scaling, axis=0, dtype=y_dtype)  # () or [1, N]
    else:
        qx, sx = quantize_fp8(x, "block", axis=1, block_size=block_size, dtype=x_dtype)
        qy, sy = quantize_fp8(y, "block", axis=0, block_size=block_size,
                              square_blocks=y_square, dtype=y_dtype)
    return qx, sx, qy, sy


def _matmul_quantized(qx, sx, qy, sy, scaling, block_size):
    """f32 product of quantised operands (see the module docstring for each mode's formulation)."""
    if scaling in ("tensor", "row"):
        return scaled_fp8_matmul(qx, sx, qy, sy)
    cd = _block_compute_dtype()
    return lax.dot_general(dequantize_fp8(qx, sx, block_size=block_size, dtype=cd),
                           dequantize_fp8(qy, sy, block_size=block_size, dtype=cd),
                           _MATMUL_DIMS, preferred_element_type=_F32)


def _scaled_matmul_2d(x, y, x_dtype, y_dtype, scaling, block_size, y_square):
    """f32 `x [M, K] @ y [K, N]` with both operands quantised to fp8 under `scaling`."""
    return _matmul_quantized(
        *_quantize_operands(x, y, x_dtype, y_dtype, scaling, block_size, y_square),
        scaling, block_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _fp8_matmul(a, b, scaling, block_size, out_dtype, a_dtype, b_dtype):
    return _scaled_matmul_2d(a, b, FP8_E4M3, FP8_E4M3, scaling, block_size, True).astype(out_dtype)


def _fp8_matmul_fwd(a, b, scaling, block_size, out_dtype, a_dtype, b_dtype):
    # The residuals are the fp8 operands (1 byte per element), not a and b.
    qa, sa, qb, sb = _quantize_operands(a, b, FP8_E4M3, FP8_E4M3, scaling, block_size, True)
    out = _matmul_quantized(qa, sa, qb, sb, scaling, block_size).astype(out_dtype)
    return out, (qa, sa, qb, sb)


def _fp8_matmul_bwd(scaling, block_size, out_dtype, a_dtype, b_dtype, res, g):
    qa, sa, qb, sb = res
    g = g.astype(_F32)
    # dA = dY . B^T and dB = A^T . dY: dY in e5m2, A and B the forward's fp8 values.
    if scaling == "tensor":
        # One scale per tensor is the same for A and A^T: reuse the forward's fp8 operands.
        qg, sg = quantize_fp8(g, "tensor", dtype=FP8_E5M2)
        da = scaled_fp8_matmul(qg, sg, qb.T, sb)
        db = scaled_fp8_matmul(qa.T, sa, qg, sg)
    else:
        # Row and block scales run along the forward's K; each backward GEMM contracts another
        # axis, so A and B are re-scaled along it. Their values are fp8 times a power of two,
        # so this re-quantisation is exact (short of underflow). For 'block', dY and A^T get
        # 1 x block tiles along their contracting axis (DeepSeek-V3's 128 x 1 tiles for the
        # transposed activation); B^T keeps B's square tiles.
        a_hat = dequantize_fp8(qa, sa, block_size=block_size)
        b_hat = dequantize_fp8(qb, sb, block_size=block_size)
        da = _scaled_matmul_2d(g, b_hat.T, FP8_E5M2, FP8_E4M3, scaling, block_size, True)
        db = _scaled_matmul_2d(a_hat.T, g, FP8_E4M3, FP8_E5M2, scaling, block_size, False)
    return da.astype(a_dtype), db.astype(b_dtype)


_fp8_matmul.defvjp(_fp8_matmul_fwd, _fp8_matmul_bwd)


def fp8_gemm_optimized(a, b, *, scaling="tensor", block_size=128, out_dtype=None):
    """`a @ b` with both operands in fp8 (e4m3), f32 accumulation, and e5m2 gradients.

    Args:
      a: `[..., M, K]` floating activations; leading axes are batch axes.
      b: `[K, N]` floating weights.
      scaling: ``'tensor'``, ``'row'`` or ``'block'`` (see the module docstring: the first two
        map onto a native fp8 GEMM on Hopper-class GPUs, ``'block'`` is emulated).
      block_size: tile edge for ``'block'`` (a: 1 x block_size, b: block_size x block_size);
        M, K and N need not be multiples of it. Ignored by the other modes but still checked.
      out_dtype: result dtype; default a's dtype.

    Returns:
      `[..., M, N]` in `out_dtype`. Differentiable in a and b (`jax.custom_vjp`: dA = dY . B^T and
      dB = A^T . dY, each with fp8 operands, dY in e5m2; the straight-through estimator, i.e. the
      rounding is treated as identity), gradients in a's and b's dtypes. What the backward pass
      keeps from the forward is the fp8 operands and their scales: 1 byte per element.

    Raises:
      ValueError: a of rank < 2, b not of rank 2, K of a != K of b, non-floating inputs or
        out_dtype, an unknown `scaling`, `block_size` not a positive int.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    _check_float("a", a.dtype)
    _check_float("b", b.dtype)
    _check_scaling(scaling)
    _check_block_size(block_size)
    if a.ndim < 2:
        raise ValueError(f"a must be [..., M, K] (rank >= 2); got shape {a.shape}")
    if b.ndim != 2:
        raise ValueError(f"b must be [K, N] (rank 2); got shape {b.shape}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(
            f"contracting dims differ: a is [..., M, K={a.shape[-1]}] but b is "
            f"[K={b.shape[0]}, N]; shapes a={a.shape}, b={b.shape}")
    try:
        out_dtype = jnp.dtype(a.dtype if out_dtype is None else out_dtype)
    except TypeError:
        validate.fail("out_dtype", out_dtype, "a floating dtype (float32, bfloat16, float16, ...)",
                      type_error=True)
    _check_float("out_dtype", out_dtype)
    *lead, m, k = a.shape
    out = _fp8_matmul(a.reshape(math.prod(lead) * m, k), b, scaling, block_size, out_dtype,
                      jnp.dtype(a.dtype), jnp.dtype(b.dtype))
    return out.reshape(*lead, m, b.shape[1])


def reference_gemm(a, b, *, out_dtype=_F32):
    """The ground truth: `a @ b` of f32 operands at full f32 precision, in `out_dtype`."""
    out = jnp.matmul(jnp.asarray(a, _F32), jnp.asarray(b, _F32), precision=lax.Precision.HIGHEST)
    return out.astype(out_dtype)


def relative_error(x, ref, axis=None) -> jax.Array:
    """Relative Frobenius error `||x - ref|| / ||ref||` in f32: one number, or one per slice.

    With `axis` (e.g. 1 for the rows of a `[M, N]` output) the norms run along `axis` only, so
    each row's error is relative to that row's size and large rows cannot hide small ones.
    """
    x = jnp.asarray(x, _F32)
    ref = jnp.asarray(ref, _F32)
    if axis is None:
        x, ref = x.ravel(), ref.ravel()
    return jnp.linalg.norm(x - ref, axis=axis) / jnp.linalg.norm(ref, axis=axis)


def quantized_nbytes(shape, scaling="tensor", *, block_size=128, dtype=FP8_E4M3) -> dict:
    """Bytes to store a `[K, N]` weight in fp8 under `scaling` (weight tiling: per tensor, per
    output column, or `block_size` x `block_size` tiles), scales in f32.

    Returns `{'data': ..., 'scales': ..., 'total': ...}` in bytes.
    """
    _check_scaling(scaling)
    _check_block_size(block_size)
    if len(shape) != 2:
        raise ValueError(f"shape must be [K, N]; got {shape}")
    k, n = shape
    n_scales = {"tensor": 1, "row": n,
                "block": -(-k // block_size) * -(-n // block_size)}[scaling]
    data = k * n * jnp.dtype(dtype).itemsize
    return {"data": data, "scales": 4 * n_scales, "total": data + 4 * n_scales}
