"""Attention visibility patterns as boolean `[T, S]` arrays (True = query t may attend key s).

These are the seed's four pictures (local, global, causal, sparse) as functions, usable as the
`mask` argument of `vishwamai.kernels.attention.attention` (broadcast to `[B, N, T, S]`).
Queries are aligned to the end of the keys when S > T (decoding with a cache).
"""
from __future__ import annotations

import jax.numpy as jnp


def _grid(T: int, S: int | None):
    S = T if S is None else S
    if T < 1 or S < 1:
        raise ValueError(f"T and S must be >= 1; got T={T}, S={S}")
    q = jnp.arange(T)[:, None] + (S - T)  # absolute position of each query
    k = jnp.arange(S)[None, :]
    return q, k


def global_mask(T: int, S: int | None = None):
    """Every query sees every key (bidirectional, the seed's 'global')."""
    q, k = _grid(T, S)
    return jnp.ones((q.shape[0], k.shape[1]), bool)


def causal_mask(T: int, S: int | None = None):
    """Query t sees keys s <= t: what a decoder-only LM uses."""
    q, k = _grid(T, S)
    return k <= q


def local_mask(T: int, window: int, S: int | None = None, *, causal: bool = False):
    """Keys within `window` positions: |t - s| <= window (the seed's window=3), or only the
    past ones with `causal=True` (sliding-window attention, as in Mistral/Gemma 2)."""
    if window < 0:
        raise ValueError(f"window must be >= 0; got {window}")
    q, k = _grid(T, S)
    near = jnp.abs(q - k) <= window
    return near & (k <= q) if causal else near


def strided_mask(T: int, stride: int, S: int | None = None, *, causal: bool = True):
    """Sparse Transformer's strided pattern (Child et al. 2019): a local band of `stride`
    keys plus every key whose distance is a multiple of `stride`."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}")
    q, k = _grid(T, S)
    m = ((q - k) < stride) & ((q - k) > -stride) | ((q - k) % stride == 0)
    return m & (k <= q) if causal else m


def seed_sparse_mask(T: int):
    """The seed's 'sparse' picture, exactly: even rows see even keys, and every fourth row
    (from row 1) sees all keys. Not causal, and rows 3, 7, ... see nothing."""
    m = jnp.zeros((T, T), bool)
    m = m.at[::2, ::2].set(True)
    return m.at[1::4, :].set(True)


def density(mask) -> float:
    """Fraction of (query, key) pairs visible: the attention FLOPs a mask-aware kernel does,
    relative to the full square (causal: (T+1)/(2T) -> 1/2)."""
    return float(jnp.mean(jnp.asarray(mask, jnp.float32)))


def empty_rows(mask) -> int:
    """Queries that see no key at all (their attention output is zero in every kernel)."""
    return int(jnp.sum(~jnp.any(mask, axis=-1)))
