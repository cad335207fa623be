"""Attention of one decode step against a KV cache kept as `[K*B, S, H]`.

A decode step's attention is two batched matrix-vector products per layer: the cached keys
against the query, then the softmax weights against the cached values. With the cache stored
as one `[K*B, S, H]` array per layer (key/value heads and batch merged, `k*B + b`: a split of
its leading axis is a split by heads first, as tensor parallelism splits them), both are
batched dots in XLA's own operand layout (keys as `[batch, S, contracting H]`, values as
`[batch, contracting S, H]`), so the step reads the cache where it lies and the write of the
new position is one in-place `dynamic_update_slice`. Measured on XLA's CPU backend (jax
0.10.2): with the `[B, S, K, H]` layout of `attention`'s other paths XLA first copied every
layer's cache into a transposed buffer, every step, and any reshape between the cache update
and the dots (`[B, K, S, H]` storage at batch 1, whose unit dimension XLA drops) made it
duplicate the update into fresh copies of the cache instead.

`cached_attention` is that op; the plain reference is `kernels.attention.reference_attention`
on the cache unmerged (`split_cache`), and `tests/test_kernels_decode.py` holds them equal.
"""
from __future__ import annotations

import jax.numpy as jnp


def merge_cache(x_BTKH):
    """`[B, T, K, H]` keys or values -> the cache layout `[K*B, T, H]`."""
    B, T, K, H = x_BTKH.shape
    return jnp.transpose(x_BTKH, (2, 0, 1, 3)).reshape(K * B, T, H)


def split_cache(x_bSH, batch: int):
    """The cache layout `[K*B, S, H]` -> `[B, S, K, H]` (the attention op's layout)."""
    KB, S, H = x_bSH.shape
    return jnp.transpose(x_bSH.reshape(KB // batch, batch, S, H), (1, 2, 0, 3))


def cached_attention(q_BTNH, k_bSH, v_bSH, mask=None, *, scale: float | None = None):
    """Softmax attention of T queries against a cache in `[K*B, S, H]` layout, in f32.

    Args:
      q_BTNH: `[B, T, N, H]` queries (T is 1 in a decode step), N a multiple of K.
      k_bSH, v_bSH: `[K*B, S, H]` cached keys and values (`merge_cache`'s layout).
      mask: optional bool, broadcastable to `[B, 1, T, S]` (True = attend): the cache's
        filled positions, a key-padding mask.
      scale: logits scale, default `1/sqrt(H)`.
    Returns:
      `[B, T, N, H]` in q's dtype; a query that sees no key returns zeros.
    """
    B, T, N, H = q_BTNH.shape
    BK, S = k_bSH.shape[0], k_bSH.shape[1]
    if (BK % B or N % (BK // B) or k_bSH.shape != (BK, S, H) or v_bSH.shape != k_bSH.shape):
        raise ValueError(f"cached_attention: q [B, T, N, H]={q_BTNH.shape} needs k and v "
                         f"[K*B, S, H] with N a multiple of K; got {k_bSH.shape}, "
                         f"{v_bSH.shape}")
    K = BK // B
    G = N // K
    scale = H ** -0.5 if scale is None else scale
    q_KBGTH = jnp.transpose(q_BTNH.reshape(B, T, K, G, H), (2, 0, 3, 1, 4))
    q_bqH = (q_KBGTH.astype(jnp.float32) * scale).reshape(BK, G * T, H)
    # Keys as the left operand, contracting their minor H: XLA's own layout, no copy.
    logits_bSq = jnp.einsum("bSH,bqH->bSq", k_bSH.astype(jnp.float32), q_bqH)
    if mask is not None:
        mask_1BST = jnp.swapaxes(jnp.broadcast_to(mask, (B, 1, T, S)), 2, 3).reshape(1, B, S, 1, T)
        mask_bSq = jnp.broadcast_to(mask_1BST, (K, B, S, G, T)).reshape(BK, S, G * T)
        logits_bSq = jnp.where(mask_bSq, logits_bSq, -jnp.inf)
    row_max = jnp.max(logits_bSq, axis=1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(logits_bSq - row_max)
    denom = jnp.sum(p, axis=1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    out_bqH = jnp.einsum("bSq,bSH->bqH", p, v_bSH.astype(jnp.float32))
    out_BTNH = jnp.transpose(out_bqH.reshape(K, B, G, T, H), (1, 3, 0, 2, 4))
    return out_BTNH.reshape(B, T, N, H).astype(q_BTNH.dtype)
