"""Feed-forward block: 2-matrix (GELU tanh or exact, ReLU) or gated 3-matrix (SwiGLU/GeGLU, Shazeer 2020)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vishwamai.layers.linear import linear_for

# "gelu" is the tanh approximation (flax's default, GPT-2's `gelu_new`); "gelu_exact" the erf form.
_ACT = {"gelu": nn.gelu, "gelu_exact": lambda x: nn.gelu(x, approximate=False), "relu": nn.relu,
        "swiglu": nn.silu, "geglu": nn.gelu}


def _gated(act):
    """`h [..., 2, F] -> act(h[..., 0, :]) * h[..., 1, :]` with a backward pass that writes the
    `[..., 2, F]` gradient in one go (autodiff of the two slices pads each half and adds them:
    two extra passes over the largest activation of the block)."""

    @jax.custom_vjp
    def gated(h):
        return act(h[..., 0, :]) * h[..., 1, :]

    def fwd(h):
        return gated(h), h

    def bwd(h, dy):
        g, u = h[..., 0, :], h[..., 1, :]
        a, act_vjp = jax.vjp(act, g)
        (dg,) = act_vjp(dy * u)
        return (jnp.stack([dg, dy * a], axis=-2),)

    gated.defvjp(fwd, bwd)
    return gated


_GATED = {name: _gated(_ACT[name]) for name in ("swiglu", "geglu")}


class MLP(nn.Module):
    """`[B, T, D] -> [B, T, D]`. Gated variants fuse gate and up into one `[D, 2, F]` kernel."""

    config: object

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool = True):
        cfg = self.config
        act = _ACT[cfg.mlp_activation]
        if cfg.gated_mlp:
            h = linear_for(cfg, (2, cfg.mlp_dim), ("embed", None, "mlp"), name="wi")(x_BTD)
            h_BTF = _GATED[cfg.mlp_activation](h)
        else:
            h_BTF = act(linear_for(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="wi")(x_BTD))
        h_BTF = checkpoint_name(h_BTF, "mlp_hidden")
        h_BTF = nn.Dropout(cfg.dropout_rate)(h_BTF, deterministic=deterministic)
        return linear_for(cfg, (cfg.hidden_dim,), ("mlp", "embed"), name="wo")(h_BTF)
