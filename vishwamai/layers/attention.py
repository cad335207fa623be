"""Causal self-attention: projections, RoPE, the KV cache, then one call to the attention op.

`FlashAttention` is the module the seed imports. Which kernel computes softmax(QK^T)V is the
config's `attention_impl` (see `vishwamai.kernels.attention.attention`); the module itself is
the same for all of them, so switching kernels never changes the parameters.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from vishwamai.kernels.attention import attention
from vishwamai.layers.linear import linear_for
from vishwamai.layers.rope import apply_rope


class FlashAttention(nn.Module):
    """Multi-head / grouped-query causal self-attention with an optional KV cache.

    Attributes:
      config: the `ModelConfig`.
      implementation: overrides `config.attention_impl` when given.
    """

    config: object
    implementation: str | None = None

    @nn.compact
    def __call__(self, x_BTD, positions_BT, *, deterministic: bool = True, decode: bool = False):
        """Args:
          x_BTD: `[B, T, D]` normalised input.
          positions_BT: `[B, T]` absolute positions (used by RoPE).
          decode: read and append to the 'cache' collection (`cached_key`, `cached_value`,
            `cache_index`); the cache length is fixed by the input length seen at init.
        Returns:
          `[B, T, D]`.
        """
        cfg = self.config
        impl = self.implementation or cfg.attention_impl
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_proj = linear_for(cfg, (N, H), ("embed", "heads", "head_dim"), name="query")
        k_proj = linear_for(cfg, (K, H), ("embed", "kv_heads", "head_dim"), name="key")
        v_proj = linear_for(cfg, (K, H), ("embed", "kv_heads", "head_dim"), name="value")
        if q_proj.use_fp8:
            # fp8 scales each projection's operands separately: three matmuls.
            q_BTNH, k_BTKH, v_BTKH = q_proj(x_BTD), k_proj(x_BTD), v_proj(x_BTD)
        else:
            q_BTNH, k_BTKH, v_BTKH = _fused_qkv(cfg, x_BTD, q_proj(x_BTD, params_only=True),
                                                k_proj(x_BTD, params_only=True),
                                                v_proj(x_BTD, params_only=True))
        q_BTNH = checkpoint_name(q_BTNH, "query_proj")
        k_BTKH = checkpoint_name(k_BTKH, "key_proj")
        v_BTKH = checkpoint_name(v_BTKH, "value_proj")
        if cfg.position == "rope":
            q_BTNH = apply_rope(q_BTNH, positions_BT, cfg.rope_theta)
            k_BTKH = apply_rope(k_BTKH, positions_BT, cfg.rope_theta)

        causal, mask = True, None
        if decode:
            k_BTKH, v_BTKH, mask = self._update_cache(k_BTKH, v_BTKH)
            causal = mask is None
        out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, causal=causal, mask=mask,
                             implementation=impl)
        out_BTNH = nn.Dropout(cfg.dropout_rate)(out_BTNH, deterministic=deterministic)
        return linear_for(cfg, (cfg.hidden_dim,), ("heads", "head_dim", "embed"), in_axes=2,
                          name="out")(out_BTNH)

    def _update_cache(self, k_BTKH, v_BTKH):
        """Writes this call's keys/values at `cache_index`; returns the whole cache and its mask.

        On the initialising call the cache is only created (zeros of the input's shape) and
        plain causal attention runs, so `init(..., decode=True)` sizes the cache.
        """
        initialized = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k_BTKH.shape, k_BTKH.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v_BTKH.shape, v_BTKH.dtype)
        idx = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return k_BTKH, v_BTKH, None
        T, S = k_BTKH.shape[1], ck.value.shape[1]
        i = idx.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k_BTKH.astype(ck.value.dtype), (0, i, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v_BTKH.astype(cv.value.dtype), (0, i, 0, 0))
        idx.value = i + T
        q_pos_T = i + jnp.arange(T)
        mask_TS = jnp.arange(S)[None, :] <= q_pos_T[:, None]
        return ck.value, cv.value, mask_TS[None, None]


def _fused_qkv(cfg, x_BTD, q_params, k_params, v_params):
    """q, k and v from one matmul against the three kernels laid side by side.

    The kernels stay separate parameters (`query`, `key`, `value`); per step they are joined
    as `[D, K, G + 2, H]` (each kv head's G query heads, then its key and value), so the
    projection is one `[B*T, D] @ [D, K*(G+2)*H]` matmul, which keeps a head-sharded layout
    local under tensor parallelism and runs faster than three narrow matmuls.
    """
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = N // K
    D = x_BTD.shape[-1]
    dtype = cfg.compute_dtype
    (wq, bq), (wk, bk), (wv, bv) = q_params, k_params, v_params
    w_DKJH = jnp.concatenate([wq.reshape(D, K, G, H), wk.reshape(D, K, 1, H),
                              wv.reshape(D, K, 1, H)], axis=2).astype(dtype)
    y_BTKJH = jnp.einsum("BTD,DKJH->BTKJH", x_BTD.astype(dtype), w_DKJH)
    if bq is not None:
        b_KJH = jnp.concatenate([bq.reshape(K, G, H), bk.reshape(K, 1, H), bv.reshape(K, 1, H)],
                                axis=1)
        y_BTKJH = y_BTKJH + b_KJH.astype(dtype)
    return _split_qkv(y_BTKJH, G)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _split_qkv(y_BTKJH, G: int):
    """`[B, T, K, G+2, H] -> (q [B, T, K*G, H], k [B, T, K, H], v [B, T, K, H])`.

    Its backward pass writes the joined gradient with one concatenate; differentiating the
    three slices would pad each to the full shape and add them (two extra passes)."""
    B, T, K, _, H = y_BTKJH.shape
    return (y_BTKJH[:, :, :, :G].reshape(B, T, K * G, H), y_BTKJH[:, :, :, G],
            y_BTKJH[:, :, :, G + 1])


def _split_qkv_fwd(y_BTKJH, G):
    return _split_qkv(y_BTKJH, G), None


def _split_qkv_bwd(G, _, cotangents):
    dq, dk, dv = cotangents
    B, T, K, H = dk.shape
    return (jnp.concatenate([dq.reshape(B, T, K, G, H), dk[:, :, :, None], dv[:, :, :, None]],
                            axis=3),)


_split_qkv.defvjp(_split_qkv_fwd, _split_qkv_bwd)
