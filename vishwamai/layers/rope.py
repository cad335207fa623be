"""Rotary position embeddings (Su et al. 2021), as a pure function.

The rotate-half layout of GPT-NeoX and Llama: the head dimension is split into halves
(x1, x2) and pair i = (x1[i], x2[i]) is rotated by angle `position * theta**(-2i/H)`.
"""
from __future__ import annotations

import jax.numpy as jnp


def rope_inv_freq(head_dim: int, theta: float = 10_000.0):
    """`[H/2]` inverse frequencies `theta**(-2i/H)`, in f32."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE; got {head_dim}")
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x_BTNH, positions_BT, theta: float = 10_000.0):
    """Rotates `x_BTNH` by its positions. Computed in f32, returned in x's dtype.

    Args:
      x_BTNH: `[B, T, N, H]` queries or keys, H even.
      positions_BT: `[B, T]` (or `[T]`) integer positions.
      theta: base of the frequency ladder.
    """
    H = x_BTNH.shape[-1]
    inv_freq_h = rope_inv_freq(H, theta)
    positions_BT = jnp.asarray(positions_BT)
    if positions_BT.ndim == 1:
        positions_BT = positions_BT[None, :]
    angle_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq_h
    sin_BT1h = jnp.sin(angle_BTh)[:, :, None, :]
    cos_BT1h = jnp.cos(angle_BTh)[:, :, None, :]
    x = x_BTNH.astype(jnp.float32)
    x1, x2 = x[..., : H // 2], x[..., H // 2:]
    out = jnp.concatenate([x1 * cos_BT1h - x2 * sin_BT1h, x2 * cos_BT1h + x1 * sin_BT1h], axis=-1)
    return out.astype(x_BTNH.dtype)
