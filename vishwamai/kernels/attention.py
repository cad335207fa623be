"""Attention ops with the layout of `jax.nn.dot_product_attention`.

Shapes: q `[B, T, N, H]`, k and v `[B, S, K, H]`, output `[B, T, N, H]`, with N = K * G
(grouped-query attention: each of the K key/value heads serves G query heads).

Five implementations behind one entry point, `attention(..., implementation=...)`:

- ``reference``: plain einsum softmax attention in f32; builds the `[T, S]` logits. Ground truth.
- ``flash``: `flash_attention`, blockwise online-softmax attention in pure JAX with a
  FlashAttention-2 style `custom_vjp`: the backward pass recomputes each block from the saved
  output and log-sum-exp, so neither pass keeps a `[T, S]` matrix alive, and key blocks that
  causality hides are never visited. Runs on every backend.
- ``xla`` / ``cudnn``: `jax.nn.dot_product_attention(implementation=...)`. 'xla' materialises the
  logits; 'cudnn' is the fused NVIDIA kernel (bf16/fp16 only).
- ``pallas_tpu``: JAX's Pallas splash-attention TPU kernel (`[B, N, T, H]` layout inside), which
  skips masked blocks too. On CPU it runs only through `pallas_tpu_attention(..., interpret=True)`.
- ``auto``: `select_implementation` picks the best of those for backend, dtype and shape.

Masking, common to all: ``causal`` (query i sees keys j <= i, top-left aligned as in
`jax.nn.dot_product_attention`), ``mask`` (bool broadcastable to `[B, N, T, S]`, True = attend; a
full one is itself O(T*S)), and two O(T + S) forms: ``kv_lengths`` (`[B]`, keys at positions
>= length are padding) and ``q_segment_ids``/``kv_segment_ids`` (`[B, T]`/`[B, S]` ints, a query
sees only keys of its own segment: packed sequences). A query row that sees no key returns zeros
(and zero gradients) in every implementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vishwamai import validate
from vishwamai.config import ATTENTION_IMPLS
from vishwamai.kernels.target import backend as _backend
# The implementations live in their own modules; their names stay importable from here.
from vishwamai.kernels.attention_checks import (  # noqa: F401
    _check_masks, _check_shapes, _dense_visible)
from vishwamai.kernels.flash import (  # noqa: F401
    DEFAULT_BLOCKS, _block_visible, _FlashConfig, _flash_backward, _flash_core, _flash_forward,
    _k_blocks_for_q_block, _plan_blocks, flash_attention, flash_tile_map, reference_attention)
from vishwamai.kernels.splash import (  # noqa: F401
    _TPU_LANES, _cudnn_unsupported_reason, _jax_nn_attention, _key_padding_from_mask,
    _largest_block, _mesh_split, _pallas_tpu_local, _rows_see_a_key, _splash_kernel,
    pallas_tpu_attention)

IMPLEMENTATIONS = ATTENTION_IMPLS

# 'auto' switches from XLA's dense attention to 'flash' from this many query*key pairs on.
# CPU: measured fwd+bwd (causal, f32, N=8, H=64), flash runs faster from T=256 on (its tiles stay
# in cache; the dense paths stream several T*S f32 arrays through memory): on the `small` preset
# at 8 x 256 tokens a train step is ~5% faster and a forward pass ~4% faster than with 'xla'.
# Below that a call takes milliseconds and flash's loops (about a second more to compile) do
# not pay back. GPU (f32, or a head dim cuDNN rejects): the same rule at the longer 512*512,
# where the dense path's T*S scores start to dominate memory.
_CPU_FLASH_MIN_PAIRS = 256 * 256
_GPU_FLASH_MIN_PAIRS = 512 * 512


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

def _cudnn_present() -> bool:
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return False
    if not devices or "cuda" not in getattr(devices[0].client, "platform_version", "").lower():
        return False
    try:
        major, minor = (int(x) for x in devices[0].compute_capability.split("."))
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (8, 0)


def available_implementations(backend: str | None = None) -> tuple[str, ...]:
    """Names `attention` accepts on `backend` (default: JAX's default backend).

    'reference', 'flash' and 'xla' run everywhere; 'cudnn' needs an NVIDIA GPU of compute
    capability >= 8.0 (Ampere or later); 'pallas_tpu' needs a TPU. 'auto' is always accepted.
    For the running backend the GPU is inspected; for another one (planning for a machine you
    are not on) the answer follows from the backend name alone.
    """
    backend = backend or _backend()
    names = ["auto", "reference", "flash", "xla"]
    if backend in ("gpu", "cuda"):
        if backend != jax.default_backend() or _cudnn_present():
            names.append("cudnn")
    if backend == "tpu":
        names.append("pallas_tpu")
    return tuple(names)


def select_implementation(q, k, *, mask=None, q_segment_ids=None, backend: str | None = None) -> str:
    """What `implementation='auto'` runs for these inputs.

    TPU: the Pallas splash kernel unless a general (non key-padding) mask is given, then
    'flash'. NVIDIA GPU: cuDNN for bf16/fp16 with a supported head dim, else 'flash' for long
    sequences (T*S >= 512*512) and 'xla' for short ones. CPU: 'flash' from T*S >= 256*256
    (where it is faster and far smaller than XLA's dense path), 'xla' below (where its compile
    time dominates).
    """
    backend = backend or _backend()
    T, S = q.shape[1], k.shape[1]
    long = T * S >= (_CPU_FLASH_MIN_PAIRS if backend == "cpu" else _GPU_FLASH_MIN_PAIRS)
    general_mask = mask is not None and (jnp.ndim(mask) >= 3 and (
        jnp.shape(mask)[-2] != 1 or (jnp.ndim(mask) == 4 and jnp.shape(mask)[1] != 1)))
    if backend == "tpu":
        return "flash" if general_mask else "pallas_tpu"
    if backend in ("gpu", "cuda") and "cudnn" in available_implementations(backend):
        # cuDNN takes masks as a dense bias: with segment ids or a general mask on a long
        # sequence the O(T*S) bias costs more than flash's tiles.
        dense_bias = general_mask or q_segment_ids is not None
        if (q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0
                and q.shape[-1] <= 128 and not (dense_bias and long)):
            return "cudnn"
    return "flash" if long else "xla"


def attention(q, k, v, *, causal: bool = False, mask=None, scale: float | None = None,
              kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
              implementation: str = "reference"):
    """The one attention entry point the model calls; dispatches on `implementation`.

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]`, N a multiple of K.
      causal, mask, scale, kv_lengths, q_segment_ids, kv_segment_ids: see the module docstring.
      implementation: one of `IMPLEMENTATIONS`; 'auto' picks with `select_implementation`.

    Returns:
      `[B, T, N, H]` in q's dtype; rows that see no key are zero in every implementation.

    Raises:
      ValueError: unknown implementation, or one that cannot run on this backend (the message
        lists those that can), or inputs it does not support.
    """
    if implementation not in IMPLEMENTATIONS:
        raise validate.InputError(
            f"unknown attention implementation {implementation!r}; accepted: {IMPLEMENTATIONS}")
    backend = _backend()
    here = available_implementations(backend)
    if implementation not in here:
        raise validate.InputError(
            f"attention implementation {implementation!r} cannot run on backend {backend!r}; "
            f"available here: {here}")
    _check_shapes(q, k, v)
    mask = _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    if implementation == "auto":
        implementation = select_implementation(q, k, mask=mask, q_segment_ids=q_segment_ids,
                                               backend=backend)
    kw = dict(causal=causal, mask=mask, scale=scale, kv_lengths=kv_lengths,
              q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    if implementation == "reference":
        return reference_attention(q, k, v, **kw)
    if implementation == "flash":
        return flash_attention(q, k, v, **kw)
    if implementation in ("xla", "cudnn"):
        return _jax_nn_attention(q, k, v, implementation=implementation, **kw)
    return pallas_tpu_attention(q, k, v, **kw)
