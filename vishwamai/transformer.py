"""The decoder: embeddings, L pre-norm blocks, a final norm and the output head.

`TransformerModel` implements whatever `ModelConfig` says. `EnhancedTransformerModel` is the
seed's name for the RMSNorm + RoPE (+ flash attention) family; `create_vishwamai_transformer`
picks it for such configs, exactly as the seed's `use_enhanced` switch does.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vishwamai.config import ModelConfig
from vishwamai.layers.attention import FlashAttention
from vishwamai.layers.embeddings import Embed
from vishwamai.layers.linear import linear_for
from vishwamai.layers.mlp import MLP
from vishwamai.layers.norms import make_norm

ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def remat_policy(name: str):
    """The `jax.checkpoint` policy behind `ModelConfig.remat` (None for 'full': save nothing)."""
    cp = jax.checkpoint_policies
    policies = {
        "full": None,
        "dots": cp.checkpoint_dots,
        "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
        "qkv_proj": cp.save_only_these_names("query_proj", "key_proj", "value_proj"),
    }
    if name not in policies:
        raise ValueError(f"remat={name!r} has no policy; accepted: {('none', *policies)}")
    return policies[name]


class Block(nn.Module):
    """Pre-norm residual block: `x + Attn(Norm(x))`, then `x + MLP(Norm(x))`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, deterministic: bool = True, decode: bool = False,
                 kv_valid_BS=None):
        cfg = self.config
        h = make_norm(cfg, "pre_attention_norm")(x_BTD)
        h = FlashAttention(cfg, name="attention")(h, positions_BT, deterministic=deterministic,
                                                  decode=decode, kv_valid_BS=kv_valid_BS)
        x_BTD = x_BTD + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = make_norm(cfg, "pre_mlp_norm")(x_BTD)
        h = MLP(cfg, name="mlp")(h, deterministic=deterministic)
        x_BTD = x_BTD + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x_BTD, ACTIVATION_AXES)


def _check_tokens(tokens, cfg: ModelConfig):
    shape = getattr(tokens, "shape", None)
    dtype = getattr(tokens, "dtype", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"tokens must be an int array of shape [B, T]; got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"tokens must have an integer dtype; got {dtype}")
    if shape[1] == 0:
        raise ValueError("tokens must hold at least one position; got T=0")
    cfg.check_seq_len(shape[1])


class TransformerModel(nn.Module):
    """Decoder-only transformer. `apply(variables, tokens, train=False) -> logits [B, T, V]`.

    Attributes:
      config: a `ModelConfig` or a dict in the seed's format.
    """

    config: Any

    @property
    def cfg(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)

    @nn.compact
    def __call__(self, tokens_BT, train: bool = False, *, decode: bool = False,
                 return_hidden: bool = False, positions_BT=None, kv_valid_BS=None):
        """Args:
          tokens_BT: `[B, T]` integer token ids, T <= max_seq_len.
          train: enables dropout (needs a 'dropout' rng).
          decode: use and extend the KV cache (`mutable=['cache']`); see `VishwamAI.generate`.
          return_hidden: return the final-normed hidden states `[B, T, D]` instead of logits,
            for losses that never build the full `[B, T, V]` logits.
          positions_BT: optional int `[B, T]` positions (RoPE angle or learned-table row); default
            0..T-1, offset by the tokens already in the cache when decoding. Left-padded rows
            pass positions that start at 0 at their first real token.
          kv_valid_BS: optional bool `[B, S]`, False at padding keys: S = T without `decode`, the
            cache length with it. Padding queries attend to nothing and return zeros.
        Returns:
          logits `[B, T, V]` in the compute dtype (or hidden states, see above).
        """
        cfg = self.cfg
        _check_tokens(tokens_BT, cfg)
        B, T = tokens_BT.shape
        deterministic = not train

        positions_T = jnp.arange(T, dtype=jnp.int32)
        if decode:
            initialized = self.has_variable("cache", "position")
            pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                positions_T = positions_T + pos.value
                pos.value = pos.value + T
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(positions_T, (B, T))
        elif jnp.shape(positions_BT) != (B, T):
            raise ValueError(f"positions_BT must have shape [B, T]={(B, T)}; got "
                             f"{jnp.shape(positions_BT)}")

        embed = Embed(cfg.vocab_size, cfg.hidden_dim, dtype=cfg.compute_dtype,
                      param_dtype=cfg.weight_dtype, name="token_embed")
        x_BTD = embed(tokens_BT)
        if cfg.position == "learned":
            x_BTD = x_BTD + Embed(cfg.max_seq_len, cfg.hidden_dim, axes=("position", "embed"),
                                  dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                                  stddev=0.01, name="position_embed")(positions_BT)
        x_BTD = nn.Dropout(cfg.dropout_rate)(x_BTD, deterministic=deterministic)
        x_BTD = nn.with_logical_constraint(x_BTD, ACTIVATION_AXES)

        block = Block
        if cfg.remat != "none" and not decode:
            # self is argument 0: deterministic and decode (3, 4) are Python bools.
            block = nn.remat(Block, policy=remat_policy(cfg.remat), static_argnums=(3, 4))
        for i in range(cfg.num_layers):
            x_BTD = block(cfg, name=f"layer_{i}")(x_BTD, positions_BT, deterministic, decode,
                                                  kv_valid_BS)

        x_BTD = make_norm(cfg, "final_norm")(x_BTD)
        if return_hidden:
            return x_BTD
        return self._logits(embed, x_BTD)

    def _logits(self, embed, x_BTD):
        cfg = self.cfg
        if cfg.tie_embeddings:
            return embed.attend(x_BTD)
        # Small initial logits (std ~0.1 for unit-RMS hidden states): training starts near
        # the uniform distribution, loss ~ ln V. The head stays out of fp8 (as in the usual
        # fp8 recipes): the logits feed a softmax over V classes and are the most sensitive.
        return linear_for(cfg, (cfg.vocab_size,), ("embed", "vocab"), use_bias=False,
                          init_scale=0.01, use_fp8=False, name="lm_head")(x_BTD)


class EnhancedTransformerModel(TransformerModel):
    """The seed's enhanced model: RMSNorm, rotary positions and flash attention.

    Same code path as `TransformerModel`; the class states (and checks) the family.
    """

    @property
    def cfg(self) -> ModelConfig:
        cfg = ModelConfig.from_dict(self.config)
        if not cfg.enhanced:
            raise ValueError(
                "EnhancedTransformerModel needs norm='rmsnorm' and position='rope'; got "
                f"norm={cfg.norm!r}, position={cfg.position!r} (use TransformerModel)")
        return cfg


def create_vishwamai_transformer(config: ModelConfig | Mapping[str, Any] | str) -> TransformerModel:
    """Builds the model for a `ModelConfig`, a seed-format dict, or a preset name.

    Returns `EnhancedTransformerModel` for RMSNorm + RoPE configs (the seed's `use_enhanced`),
    `TransformerModel` otherwise.
    """
    if isinstance(config, str):
        from vishwamai.config import get_preset
        cfg = get_preset(config)
    else:
        cfg = ModelConfig.from_dict(config)
    return (EnhancedTransformerModel if cfg.enhanced else TransformerModel)(cfg)
