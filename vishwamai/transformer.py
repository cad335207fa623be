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

from vishwamai import validate
from vishwamai.config import ModelConfig, as_config
from vishwamai.layers.attention import FlashAttention
from vishwamai.layers.embeddings import Embed
from vishwamai.layers.linear import linear_for
from vishwamai.layers.mlp import MLP
from vishwamai.layers.moe import MOE_COLLECTION, MoE
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
    """Pre-norm residual block: `x + Attn(Norm(x))`, then `x + MLP(Norm(x))` (or `MoE`).

    Attributes:
      config: the `ModelConfig`.
      scanned: return `(x, None)`, the (carry, per-step output) pair `nn.scan` expects.
      moe: the feed-forward is the mixture of experts (`is_moe_layer`), named `moe`.
    """

    config: ModelConfig
    scanned: bool = False
    moe: bool = False

    @nn.compact
    def __call__(self, x_BTD, positions_BT, deterministic: bool = True, decode: bool = False,
                 kv_valid_BS=None):
        cfg = self.config
        h = make_norm(cfg, "pre_attention_norm")(x_BTD)
        h = FlashAttention(cfg, name="attention")(h, positions_BT, deterministic=deterministic,
                                                  decode=decode, kv_valid_BS=kv_valid_BS)
        x_BTD = x_BTD + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = make_norm(cfg, "pre_mlp_norm")(x_BTD)
        ffn = MoE(cfg, name="moe") if self.moe else MLP(cfg, name="mlp")
        h = ffn(h, deterministic=deterministic)
        x_BTD = x_BTD + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        x_BTD = nn.with_logical_constraint(x_BTD, ACTIVATION_AXES)
        return (x_BTD, None) if self.scanned else x_BTD


#: Name of the one module that holds the stacked blocks when `ModelConfig.scan_layers` is set.
SCAN_NAME = "layers"
#: Logical name of the stacked layer axis (axis 0 of every leaf under `SCAN_NAME`).
LAYER_AXIS = "layers"


def _layer_key(i: int) -> str:
    return f"layer_{i}"


def is_moe_layer(cfg: ModelConfig, i: int) -> bool:
    """Whether block i's feed-forward is the mixture of experts (after `first_dense_layers`)."""
    return cfg.num_experts > 0 and i >= cfg.first_dense_layers


def _blocks(cfg: ModelConfig, decode: bool):
    """The block class as called `L` times: remat-wrapped for training when asked."""
    if cfg.remat == "none" or decode:
        return Block
    # self is argument 0: deterministic and decode (3, 4) are Python bools. Inside a scan the
    # loop boundary already keeps XLA from merging the recomputation back into the forward
    # pass, so the optimisation barriers of `prevent_cse` would only cost (as Flax advises).
    return nn.remat(Block, policy=remat_policy(cfg.remat), static_argnums=(3, 4),
                    prevent_cse=not cfg.scan_layers)


def scanned_blocks(cfg: ModelConfig, decode: bool):
    """`nn.scan` of the block over `cfg.num_layers` steps, weights and cache stacked on axis 0.

    Each layer draws its own init and dropout keys (`split_rngs`); positions, `deterministic`,
    `decode` and the key-padding mask are broadcast to every step (the two flags stay Python bools, so remat's
    `static_argnums` still sees constants). Every parameter's logical axes gain a leading
    'layers' name, which the sharding rules leave unsplit.
    """
    return nn.scan(
        _blocks(cfg, decode),
        variable_axes={"params": 0, "cache": 0, MOE_COLLECTION: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: LAYER_AXIS},
    )


def stack_layers(params, num_layers: int):
    """An unrolled parameter tree (`layer_0` ... `layer_{L-1}`) -> the scanned layout.

    Every leaf of the L per-layer subtrees is stacked on a new leading axis under `layers`;
    everything else (embeddings, final norm, head) is kept as is. Pure and exact: the same
    numbers, only rearranged, so `unstack_layers(stack_layers(p, L)) == p` bit for bit.

    Args:
      params: mapping with keys `layer_0` ... `layer_{num_layers-1}` (e.g. `VishwamAI.init`
        of a config with `scan_layers=False`, or a restored checkpoint).
      num_layers: L, the number of blocks.
    Returns:
      a new dict; leaves under `layers` have shape `[L, ...]`.
    Raises:
      ValueError: `params` is not a mapping, lacks one of the layers, holds extra `layer_i`
        keys, or already has `layers`.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"stack_layers: num_layers must be a positive int; got {num_layers!r}")
    if not isinstance(params, Mapping):
        raise ValueError(f"stack_layers: params must be a mapping; got {type(params).__name__}")
    if SCAN_NAME in params:
        raise ValueError(f"stack_layers: params already has a stacked {SCAN_NAME!r} subtree")
    keys = [_layer_key(i) for i in range(num_layers)]
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"stack_layers: params has no {missing[0]!r} (num_layers={num_layers}; "
                         f"top-level keys: {sorted(params)})")
    extra = sorted(k for k in params if k.startswith("layer_") and k not in keys)
    if extra:
        raise ValueError(f"stack_layers: params has layers beyond num_layers={num_layers}: {extra}")
    out = {k: v for k, v in params.items() if k not in keys}
    out[SCAN_NAME] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in keys])
    return out


def unstack_layers(params):
    """The scanned layout (`layers` with `[L, ...]` leaves) -> `layer_0` ... `layer_{L-1}`.

    The inverse of `stack_layers`, exact (slices of the stacked arrays).

    Raises:
      ValueError: `params` is not a mapping, has no `layers` subtree, or its leaves disagree
        on L.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"unstack_layers: params must be a mapping; got {type(params).__name__}")
    if SCAN_NAME not in params:
        raise ValueError(f"unstack_layers: params has no stacked {SCAN_NAME!r} subtree "
                         f"(top-level keys: {sorted(params)})")
    stacked = params[SCAN_NAME]
    lengths = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(stacked)}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(f"unstack_layers: leaves under {SCAN_NAME!r} must share a leading "
                         f"layer axis; got leading sizes {sorted(map(str, lengths))}")
    (L,) = lengths
    out = {k: v for k, v in params.items() if k != SCAN_NAME}
    for i in range(L):
        out[_layer_key(i)] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


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
    # Concrete ids are range-checked on the host; traced ones (under jit) cannot be, and an
    # out-of-range id there becomes a NaN embedding row instead (see `Embed`).
    validate.token_ids("tokens", tokens, cfg.vocab_size)


class TransformerModel(nn.Module):
    """Decoder-only transformer. `apply(variables, tokens, train=False) -> logits [B, T, V]`.

    Attributes:
      config: a `ModelConfig` or a dict in the seed's format.
    """

    config: Any

    @property
    def cfg(self) -> ModelConfig:
        return as_config(self.config)

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

        if cfg.scan_layers:
            x_BTD, _ = scanned_blocks(cfg, decode)(cfg, scanned=True, moe=cfg.num_experts > 0,
                                                   name=SCAN_NAME)(
                x_BTD, positions_BT, deterministic, decode, kv_valid_BS)
        else:
            block = _blocks(cfg, decode)
            for i in range(cfg.num_layers):
                x_BTD = block(cfg, moe=is_moe_layer(cfg, i), name=_layer_key(i))(
                    x_BTD, positions_BT, deterministic, decode, kv_valid_BS)

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
    """The design notebook's name for the RMSNorm + rotary family, kept so its code runs.

    The notebook had two model classes; here the config decides every architecture choice, so
    one implementation (`TransformerModel`) serves both and this subclass adds only a check
    that its config really is of that family (RMSNorm and RoPE). Which attention kernel runs
    is the config's `attention_impl`, as for `TransformerModel`.
    """

    @property
    def cfg(self) -> ModelConfig:
        cfg = as_config(self.config)
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
    cfg = as_config(config)
    return (EnhancedTransformerModel if cfg.enhanced else TransformerModel)(cfg)
