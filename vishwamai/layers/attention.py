"""Causal self-attention: projections, RoPE, the KV cache, then one call to the attention op.

`FlashAttention` is the module the seed imports. Which kernel computes softmax(QK^T)V is the
config's `attention_impl` (see `vishwamai.kernels.attention.attention`); the module itself is
the same for all of them, so switching kernels never changes the parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from vishwamai.kernels.attention import attention
from vishwamai.kernels.decode import cached_attention, merge_cache, split_cache
from vishwamai.kernels.target import backend
from vishwamai.layers.linear import linear_for
from vishwamai.layers.norms import RMSNorm
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
    def __call__(self, x_BTD, positions_BT, *, deterministic: bool = True, decode: bool = False,
                 kv_valid_BS=None):
        """Args:
          x_BTD: `[B, T, D]` normalised input.
          positions_BT: `[B, T]` absolute positions (used by RoPE).
          decode: read and append to the 'cache' collection (`cached_key`, `cached_value`,
            `cache_index`); the cache length is fixed by the input length seen at init.
          kv_valid_BS: optional bool `[B, S]`, False at padding keys (left-padded prompts).
            S is T without `decode`, the cache length with it.
        Returns:
          `[B, T, D]`.
        """
        cfg = self.config
        impl = self.implementation or cfg.attention_impl
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_bias = cfg.attention_qkv_bias
        q_BTNH = linear_for(cfg, (N, H), ("embed", "heads", "head_dim"), use_bias=qkv_bias,
                            name="query")(x_BTD)
        k_BTKH = linear_for(cfg, (K, H), ("embed", "kv_heads", "head_dim"), use_bias=qkv_bias,
                            name="key")(x_BTD)
        v_BTKH = linear_for(cfg, (K, H), ("embed", "kv_heads", "head_dim"), use_bias=qkv_bias,
                            name="value")(x_BTD)
        if cfg.qk_norm != "none":
            q_BTNH, k_BTKH = self._qk_norm(q_BTNH), self._qk_norm(k_BTKH, "key_norm")
        q_BTNH = checkpoint_name(q_BTNH, "query_proj")
        k_BTKH = checkpoint_name(k_BTKH, "key_proj")
        v_BTKH = checkpoint_name(v_BTKH, "value_proj")
        if cfg.position == "rope":
            scaling = cfg.rope_scaling_params
            q_BTNH = apply_rope(q_BTNH, positions_BT, cfg.rope_theta, scaling)
            k_BTKH = apply_rope(k_BTKH, positions_BT, cfg.rope_theta, scaling)

        causal, mask = True, None
        if decode:
            B = k_BTKH.shape[0]
            k_bSH, v_bSH, mask = self._update_cache(k_BTKH, v_BTKH)
            splash = impl == "pallas_tpu" or (impl == "auto" and backend() == "tpu")
            if mask is not None and q_BTNH.shape[1] == 1 and not splash:
                # One new token: attend over the cache where it lies (no copy of it). A TPU
                # keeps its splash kernel, which takes the keys heads-major anyway.
                if kv_valid_BS is not None:
                    self._check_valid(kv_valid_BS, B, k_bSH.shape[1])
                    mask = mask & kv_valid_BS.astype(bool)[:, None, None, :]
                out_BTNH = cached_attention(q_BTNH, k_bSH, v_bSH, mask)
                return self._out(out_BTNH, deterministic)
            if mask is not None:   # a prompt, or splash: the cache in the attention op's layout
                k_BTKH, v_BTKH = split_cache(k_bSH, B), split_cache(v_bSH, B)
            causal = mask is None
        if kv_valid_BS is not None:
            self._check_valid(kv_valid_BS, *k_BTKH.shape[:2])
            valid_B11S = kv_valid_BS.astype(bool)[:, None, None, :]
            mask = valid_B11S if mask is None else mask & valid_B11S
        out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, causal=causal, mask=mask,
                             implementation=impl)
        return self._out(out_BTNH, deterministic)

    def _out(self, out_BTNH, deterministic):
        cfg = self.config
        out_BTNH = nn.Dropout(cfg.dropout_rate)(out_BTNH, deterministic=deterministic)
        return linear_for(cfg, (cfg.hidden_dim,), ("heads", "head_dim", "embed"), in_axes=2,
                          name="out")(out_BTNH)

    @staticmethod
    def _check_valid(kv_valid_BS, B, S):
        if kv_valid_BS.shape != (B, S):
            raise ValueError(f"kv_valid_BS must have shape [B, S]={(B, S)}; got "
                             f"{kv_valid_BS.shape}")

    def _qk_norm(self, x_BTNH, name="query_norm"):
        """RMSNorm of queries or keys: over each head's H ('head', Qwen3) or all N*H ('full', OLMoE)."""
        cfg = self.config
        norm = RMSNorm(eps=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                       name=name)
        if cfg.qk_norm == "head":
            return norm(x_BTNH)
        B, T, N, H = x_BTNH.shape
        return norm(x_BTNH.reshape(B, T, N * H)).reshape(B, T, N, H)

    def _update_cache(self, k_BTKH, v_BTKH):
        """Writes this call's keys/values at `cache_index`; returns the whole cache
        (`[K*B, S, H]`, see `vishwamai.kernels.decode`) and its mask (`[1, 1, T, S]`, the
        filled positions each query sees).

        A decode step reads the cache in place (two batched dots) and writes its new position
        with one `dynamic_update_slice`, which XLA does in place on a donated or scan-carried
        cache. On the initialising call the cache is only created (zeros sized by the input)
        and plain causal attention runs, so `init(..., decode=True)` sizes the cache.
        """
        B, T, K, H = k_BTKH.shape
        initialized = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, (K * B, T, H), k_BTKH.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, (K * B, T, H), v_BTKH.dtype)
        idx = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return k_BTKH, v_BTKH, None
        S = ck.value.shape[1]
        i = idx.value
        ck.value = jax.lax.dynamic_update_slice(
            ck.value, merge_cache(k_BTKH).astype(ck.value.dtype), (0, i, 0))
        cv.value = jax.lax.dynamic_update_slice(
            cv.value, merge_cache(v_BTKH).astype(cv.value.dtype), (0, i, 0))
        idx.value = i + T
        q_pos_T = i + jnp.arange(T)
        mask_TS = jnp.arange(S)[None, :] <= q_pos_T[:, None]
        return ck.value, cv.value, mask_TS[None, None]
