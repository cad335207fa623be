"""Rotary position embeddings (Su et al. 2021), as pure functions.

The rotate-half layout of GPT-NeoX and Llama: the head dimension is split into halves
(x1, x2) and pair i = (x1[i], x2[i]) is rotated by angle `position * inv_freq[i]`, with
`inv_freq[i] = theta**(-2i/H)` before any context-extension scaling.

Scaling (`scaling`, a mapping in Hugging Face's `rope_scaling` format, or None):
- ``linear`` (position interpolation, Chen et al. 2023): every inverse frequency divided by
  `factor`.
- ``llama3`` (Meta's Llama 3.1): wavelengths shorter than `original_max_position_embeddings /
  high_freq_factor` are kept, those longer than `original_max_position_embeddings /
  low_freq_factor` are divided by `factor`, and the band between is interpolated smoothly.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def rope_inv_freq(head_dim: int, theta: float = 10_000.0, scaling: Mapping | None = None):
    """`[H/2]` inverse frequencies `theta**(-2i/H)`, scaled as `scaling` says, in f32.

    Computed in numpy f32 with the operations of transformers' `_compute_default_rope_parameters`,
    `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters`, in their order,
    so the frequencies agree with theirs to the last bit or so.

    Args:
      head_dim: H, even.
      theta: base of the frequency ladder.
      scaling: None, or a mapping with `rope_type` (or `type`) in ('default', 'linear', 'llama3')
        and that type's keys: `factor` (linear); `factor`, `low_freq_factor`, `high_freq_factor`,
        `original_max_position_embeddings` (llama3).
    Returns:
      `[H/2]` float32 array.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE; got {head_dim}")
    exponent_h = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    # The power in f64 rounded to f32, then the f32 reciprocal: torch's `base ** tensor` rounding.
    inv_freq_h = np.float32(1.0) / (np.float64(theta) ** exponent_h.astype(np.float64)).astype(np.float32)
    kind = _scaling_type(scaling)
    if kind == "none":
        return jnp.asarray(inv_freq_h)
    factor = np.float32(_scaling_value(scaling, "factor"))
    if kind == "linear":
        return jnp.asarray(inv_freq_h / factor)
    low, high, old_len = (np.float32(_scaling_value(scaling, k)) for k in _LLAMA3_KEYS[1:])
    if not high > low:
        raise ValueError(f"rope scaling high_freq_factor={high} must exceed low_freq_factor={low}")
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen_h = np.float32(2 * math.pi) / inv_freq_h
    scaled_h = np.where(wavelen_h > low_freq_wavelen, inv_freq_h / factor, inv_freq_h)
    smooth_h = (old_len / wavelen_h - low) / (high - low)
    smoothed_h = (1 - smooth_h) * scaled_h / factor + smooth_h * scaled_h
    medium_h = ~(wavelen_h < high_freq_wavelen) & ~(wavelen_h > low_freq_wavelen)
    return jnp.asarray(np.where(medium_h, smoothed_h, scaled_h).astype(np.float32))


def _scaling_type(scaling) -> str:
    if scaling is None:
        return "none"
    if not isinstance(scaling, Mapping):
        raise ValueError(f"rope scaling must be a mapping or None; got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    kind = "none" if kind in ("default", "none", None) else kind
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling type {kind!r} is not supported; accepted: "
                         f"{('default',) + ROPE_SCALINGS[1:]}")
    return kind


def _scaling_value(scaling, key) -> float:
    value = scaling.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"rope scaling {key} must be a number > 0; got {value!r}")
    return float(value)


def apply_rope(x_BTNH, positions_BT, theta: float = 10_000.0, scaling: Mapping | None = None):
    """Rotates `x_BTNH` by its positions. Computed in f32, returned in x's dtype.

    Args:
      x_BTNH: `[B, T, N, H]` queries or keys, H even.
      positions_BT: `[B, T]` (or `[T]`) integer positions.
      theta: base of the frequency ladder.
      scaling: context-extension scaling of the frequencies (see `rope_inv_freq`).
    """
    H = x_BTNH.shape[-1]
    inv_freq_h = rope_inv_freq(H, theta, scaling)
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
