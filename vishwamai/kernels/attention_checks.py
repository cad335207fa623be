"""Argument checks and mask helpers shared by every attention implementation.

`_check_shapes` and `_check_masks` validate q/k/v and the masking arguments of
`vishwamai.kernels.attention.attention` (shapes as in that module's docstring);
`_dense_visible` builds the full `[B, N, T, S]` visibility pattern the dense paths and the
reference use.
"""
from __future__ import annotations

import jax.numpy as jnp

from vishwamai import validate


# --------------------------------------------------------------------------------------------
# Argument checks and mask helpers shared by the implementations
# --------------------------------------------------------------------------------------------

def _check_shapes(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q [B, T, N, H], k/v [B, S, K, H]; got ranks "
            f"q={q.ndim}, k={k.ndim}, v={v.ndim}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            validate.fail(name, f"<array of {x.dtype}>",
                          "a floating-point array (float32, bfloat16, float16)", type_error=True)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k={k.shape}, v={v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must agree on batch B and head dim H; got q={q.shape}, k={k.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"query heads N={q.shape[2]} must be a multiple of key/value heads K={k.shape[2]}")


def _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids):
    """Validates the masking arguments; returns mask as a 4-D bool array (or None)."""
    B, T, N, _ = q.shape
    S = k.shape[1]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = attend); got dtype {mask.dtype}")
        if mask.ndim > 4:
            raise ValueError(f"mask must broadcast to [B, N, T, S]; got shape {mask.shape}")
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        for got, want, name in zip(mask.shape, (B, N, T, S), "BNTS"):
            if got not in (1, want):
                raise ValueError(
                    f"mask shape {mask.shape} does not broadcast to [B, N, T, S]="
                    f"{(B, N, T, S)} (dimension {name})")
    if kv_lengths is not None and jnp.shape(kv_lengths) != (B,):
        raise ValueError(f"kv_lengths must have shape [B]=({B},); got {jnp.shape(kv_lengths)}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if q_segment_ids is not None:
        if jnp.shape(q_segment_ids) != (B, T) or jnp.shape(kv_segment_ids) != (B, S):
            raise ValueError(
                f"segment ids must have shapes q [B, T]={(B, T)} and kv [B, S]={(B, S)}; got "
                f"{jnp.shape(q_segment_ids)} and {jnp.shape(kv_segment_ids)}")
    return mask


def _dense_visible(B, T, S, *, causal, mask, kv_lengths, q_segment_ids, kv_segment_ids):
    """The full visibility pattern as a bool array broadcastable to `[B, N, T, S]` (O(T*S))."""
    visible = jnp.ones((1, 1, T, S), dtype=bool)
    if causal:
        visible = visible & (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])
    if mask is not None:
        visible = visible & mask
    if kv_lengths is not None:
        visible = visible & (jnp.arange(S)[None, :] < jnp.asarray(kv_lengths)[:, None])[:, None, None, :]
    if q_segment_ids is not None:
        same = jnp.asarray(q_segment_ids)[:, :, None] == jnp.asarray(kv_segment_ids)[:, None, :]
        visible = visible & same[:, None]
    return visible
