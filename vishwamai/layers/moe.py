"""The mixture-of-experts feed-forward block: router, routed experts, optional shared experts.

`[B, T, D] -> [B, T, D]`, a drop-in for `MLP` in the decoder block. The config's MoE fields
(see `ModelConfig`): `num_experts` (E), `num_experts_per_tok` (K), `moe_mlp_dim` (F of one
expert), `router_scoring`, `norm_topk_prob`, `router_n_group` / `router_topk_group`,
`routed_scaling_factor`, `router_bias`, `num_shared_experts` / `shared_expert_dim` /
`shared_expert_gate`, `moe_impl` ('dropless', 'capacity', 'dense') and `capacity_factor`.
Under a mesh with an `expert` axis (`jax.set_mesh`), the dropless path splits the experts over
it and dispatches with all-to-all (`vishwamai.kernels.moe_ep`).

Parameters: `router/kernel [D, E]` (f32 logits, as the published models compute them),
`wi [E, D, 2, F]` (gate, up) or `[E, D, F]`, `wo [E, F, D]`, `expert_bias [E]` (aux-loss-free
balancing: chooses, never weighs, no gradient; `update_expert_bias` moves it), and a shared
`MLP` under `shared_experts` (times `sigmoid(shared_gate(x))` when gated, as Qwen2-MoE does).

Each call records, in the `moe` collection when it is mutable (`apply(..., mutable=['moe'])`),
the load-balancing loss, the router z-loss, the tokens each expert received and the dropped
assignments; `moe_losses` reads them back.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vishwamai.kernels import moe as kmoe
from vishwamai.kernels.moe_ep import (experts_dropless_ep, experts_dropless_sharded,
                                      expert_parallel_size, mesh_size)
from vishwamai.layers.linear import Linear
from vishwamai.layers.mlp import MLP, _ACT

MOE_COLLECTION = "moe"
EXPERT_AXIS = "expert"


def shared_config(cfg):
    """The config of the shared-expert MLP: the dense MLP with the shared width."""
    width = cfg.shared_expert_dim or cfg.num_shared_experts * cfg.expert_mlp_dim
    return dataclasses.replace(cfg, mlp_dim=width, num_experts=0)


class MoE(nn.Module):
    """Routed experts (and shared ones): `[B, T, D] -> [B, T, D]`."""

    config: object

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool = True):
        cfg = self.config
        B, T, D = x_BTD.shape
        E, K, F = cfg.num_experts, cfg.num_experts_per_tok, cfg.expert_mlp_dim
        x_TD = x_BTD.reshape(B * T, D).astype(cfg.compute_dtype)
        logits_TE = Linear((E,), ("embed", None), use_bias=False, dtype=jnp.float32,
                           param_dtype=cfg.weight_dtype, name="router")(x_TD)
        bias_E = None
        if cfg.router_bias:
            bias_E = self.param("expert_bias", nn.with_logical_partitioning(
                nn.initializers.zeros, (None,)), (E,), jnp.float32)
        routing = kmoe.route(logits_TE, top_k=K, scoring=cfg.router_scoring,
                             norm_topk=cfg.norm_topk_prob, bias_E=bias_E,
                             n_group=cfg.router_n_group, topk_group=cfg.router_topk_group,
                             scaling=cfg.routed_scaling_factor)
        gated = cfg.gated_mlp
        wi_shape, wi_axes = ((E, D, 2, F), (EXPERT_AXIS, "embed", None, "mlp")) if gated else (
            (E, D, F), (EXPERT_AXIS, "embed", "mlp"))
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1,
                                                out_axis=tuple(range(2, len(wi_shape))),
                                                batch_axis=(0,))
        wi = self.param("wi", nn.with_logical_partitioning(init, wi_axes), wi_shape,
                        cfg.weight_dtype)
        wo_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1,
                                                   out_axis=2, batch_axis=(0,))
        wo = self.param("wo", nn.with_logical_partitioning(wo_init, (EXPERT_AXIS, "mlp", "embed")),
                        (E, F, D), cfg.weight_dtype)
        wi_EDX = wi.astype(cfg.compute_dtype).reshape(E, D, -1)
        wo_EFD = wo.astype(cfg.compute_dtype)
        act = _ACT[cfg.mlp_activation]
        dropped = jnp.zeros((), jnp.int32)
        if cfg.moe_impl == "dropless" and expert_parallel_size() > 1:
            y_TD = experts_dropless_ep(x_TD, routing, wi_EDX, wo_EFD, act=act, gated=gated)
        elif cfg.moe_impl == "dropless" and mesh_size() > 1:
            y_TD = experts_dropless_sharded(x_TD, routing, wi.astype(cfg.compute_dtype), wo_EFD,
                                            act=act, gated=gated)
        elif cfg.moe_impl == "dropless":
            y_TD = kmoe.experts_dropless(x_TD, routing, wi_EDX, wo_EFD, act=act, gated=gated)
        elif cfg.moe_impl == "capacity":
            y_TD, dropped = kmoe.experts_capacity(x_TD, routing, wi_EDX, wo_EFD, act=act,
                                                  gated=gated,
                                                  capacity_factor=cfg.capacity_factor)
        else:
            y_TD = kmoe.experts_dense(x_TD, routing, wi_EDX, wo_EFD, act=act, gated=gated)
        y_BTD = checkpoint_name(y_TD.reshape(B, T, D), "moe_out")

        if cfg.num_shared_experts:
            s_BTD = MLP(shared_config(cfg), name="shared_experts")(x_BTD, deterministic)
            if cfg.shared_expert_gate:
                g = Linear((1,), ("embed", None), use_bias=False, dtype=cfg.compute_dtype,
                           param_dtype=cfg.weight_dtype, name="shared_gate")(x_BTD)
                s_BTD = jax.nn.sigmoid(g) * s_BTD
            y_BTD = y_BTD + s_BTD.astype(y_BTD.dtype)

        if self.is_mutable_collection(MOE_COLLECTION) and not self.is_initializing():
            self.sow(MOE_COLLECTION, "aux_loss", kmoe.load_balancing_loss(routing))
            self.sow(MOE_COLLECTION, "z_loss", kmoe.router_z_loss(routing))
            self.sow(MOE_COLLECTION, "tokens_per_expert",
                     kmoe.tokens_per_expert(routing.experts_TK, E))
            self.sow(MOE_COLLECTION, "dropped", dropped)
        return y_BTD.astype(x_BTD.dtype)


def _leaves(state, name):
    """Every recorded value called `name` in a `moe` collection, stacked over MoE layers."""
    found = []

    def visit(tree):
        for key, value in tree.items():
            if key == name:
                vals = value if isinstance(value, tuple) else (value,)
                for v in vals:
                    v = jnp.asarray(v)
                    # scanned layers carry a leading layer axis; per-layer values are scalars
                    # (or [E] for tokens_per_expert)
                    found.append(v.reshape((-1,) + v.shape[v.ndim - (name == "tokens_per_expert"):]))
            elif hasattr(value, "items"):
                visit(value)

    visit(state)
    return jnp.concatenate(found) if found else None


def moe_losses(state) -> dict:
    """Averages over MoE layers of what the blocks recorded.

    Args:
      state: the `moe` collection returned by `apply(..., mutable=['moe'])` (or a tree holding it).
    Returns:
      dict with `aux_loss` and `z_loss` (f32 means over layers), `tokens_per_expert`
      (`[L_moe, E]` int32) and `dropped` (total assignments dropped, all layers); empty when the
      model has no MoE layer.
    """
    state = state.get(MOE_COLLECTION, state) if hasattr(state, "get") else state
    aux = _leaves(state, "aux_loss")
    if aux is None:
        return {}
    return {"aux_loss": aux.mean(), "z_loss": _leaves(state, "z_loss").mean(),
            "tokens_per_expert": _leaves(state, "tokens_per_expert"),
            "dropped": _leaves(state, "dropped").sum()}


def moe_penalty(cfg, stats):
    """`router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss` (0 when `stats` is empty)."""
    if not stats:
        return jnp.zeros((), jnp.float32)
    return cfg.router_aux_loss_coef * stats["aux_loss"] + cfg.router_z_loss_coef * stats["z_loss"]


def update_expert_bias(bias_E, tokens_per_expert_E, rate: float):
    """DeepSeek-V3's auxiliary-loss-free balancing step: raise the bias of under-loaded experts.

    `bias + rate * sign(mean load - load)`; applied after each optimizer step, outside autodiff.
    """
    load = tokens_per_expert_E.astype(jnp.float32)
    return bias_E + rate * jnp.sign(load.mean(-1, keepdims=True) - load)
