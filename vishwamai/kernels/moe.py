"""Mixture-of-experts kernels: the router, two dispatch paths and the dense reference they match.

Shapes: T tokens (batch and length flattened), D model width, E routed experts, K experts per
token, F expert MLP width, X the expert's input projection width (2F gated, F plain), C slots per
expert (capacity path).

- `route`: softmax or sigmoid scores, optional per-expert selection bias (DeepSeek-V3's
  auxiliary-loss-free balancing), group-limited top-k (DeepSeek), top-k renormalisation and a
  routed scaling factor.
- `experts_dense`: the reference. Every token through every expert, masked by the routing
  weights. Quadratic in E, exact, slow; the paths below must match it.
- `experts_dropless`: tokens sorted by expert, one grouped matmul per projection
  (`jax.lax.ragged_dot`; megablox `gmm` on a TPU). No token is dropped.
- `experts_capacity`: each expert gets `C = ceil(capacity_factor * T * K / E)` slots, filled in
  top-k-slot-major order (every token's first choice before any second choice, as GShard and
  Switch do); assignments past C are dropped (they add nothing) and counted.
- `load_balancing_loss` (Switch / Mixtral form, transformers' `load_balancing_loss_func`) and
  `router_z_loss` (ST-MoE).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from vishwamai.kernels.target import backend

SCORING = ("softmax", "sigmoid")
IMPLS = ("dropless", "capacity", "dense")


@dataclasses.dataclass(frozen=True)
class Routing:
    """One router decision.

    Attributes:
      weights_TK: f32 combine weights of the chosen experts (after renormalisation and scaling).
      experts_TK: int32 ids of the chosen experts, best first.
      scores_TE: f32 scores of every expert (softmax or sigmoid of the logits, no bias).
      logits_TE: f32 router logits.
    """

    weights_TK: jax.Array
    experts_TK: jax.Array
    scores_TE: jax.Array
    logits_TE: jax.Array


jax.tree_util.register_dataclass(Routing, data_fields=["weights_TK", "experts_TK", "scores_TE",
                                                       "logits_TE"], meta_fields=[])


def route(logits_TE, *, top_k: int, scoring: str = "softmax", norm_topk: bool = True,
          bias_E=None, n_group: int = 1, topk_group: int = 1,
          scaling: float = 1.0) -> Routing:
    """Token-choice top-k routing.

    Args:
      logits_TE: router logits `[T, E]` (any float dtype; computed in f32).
      top_k: K, experts per token.
      scoring: 'softmax' (over all E) or 'sigmoid' (each expert on its own).
      norm_topk: divide the K chosen scores by their sum (Mixtral, Qwen3-MoE, DeepSeek-V3).
      bias_E: optional `[E]` bias added to the scores for the choice only (never to the
        weights, and without gradient): DeepSeek-V3's auxiliary-loss-free balancing.
      n_group, topk_group: group-limited routing: the E experts form `n_group` groups, each
        scored by the sum of its two best (biased) scores (its best one if a group holds one
        expert); only experts in the `topk_group` best groups can be chosen.
      scaling: multiplies the final weights (DeepSeek's routed scaling factor).
    Returns:
      a `Routing`.
    """
    if scoring not in SCORING:
        raise ValueError(f"scoring={scoring!r} is not one of {SCORING}")
    logits = logits_TE.astype(jnp.float32)
    T, E = logits.shape
    scores = jax.nn.softmax(logits, axis=-1) if scoring == "softmax" else jax.nn.sigmoid(logits)
    choice = scores if bias_E is None else scores + jax.lax.stop_gradient(
        bias_E.astype(jnp.float32))
    if n_group > 1:
        grouped = choice.reshape(T, n_group, E // n_group)
        best = jax.lax.top_k(grouped, min(2, E // n_group))[0].sum(-1)       # [T, n_group]
        _, groups = jax.lax.top_k(best, topk_group)
        keep = jnp.zeros((T, n_group), bool).at[jnp.arange(T)[:, None], groups].set(True)
        keep = jnp.repeat(keep, E // n_group, axis=1)
        choice = jnp.where(keep, choice, -jnp.inf)
    _, experts = jax.lax.top_k(jax.lax.stop_gradient(choice), top_k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if norm_topk:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return Routing(weights * scaling, experts.astype(jnp.int32), scores, logits)


def _ffn_dense(h_X, F, act, gated):
    return act(h_X[..., :F]) * h_X[..., F:] if gated else act(h_X)


def experts_dense(x_TD, routing: Routing, wi_EDX, wo_EFD, *, act: Callable, gated: bool = True):
    """The reference: every token through all E experts, combined with the routing weights.

    Args:
      x_TD: tokens `[T, D]`.
      routing: the router's decision (`route`).
      wi_EDX: expert input projections `[E, D, X]`, X = 2F (gate then up) when gated.
      wo_EFD: expert output projections `[E, F, D]`.
      act: the activation (SiLU for SwiGLU).
      gated: gated (3-matrix) experts.
    Returns:
      `[T, D]` in x's dtype.
    """
    E, F = wo_EFD.shape[0], wo_EFD.shape[1]
    h_TEX = jnp.einsum("TD,EDX->TEX", x_TD, wi_EDX)
    y_TED = jnp.einsum("TEF,EFD->TED", _ffn_dense(h_TEX, F, act, gated), wo_EFD)
    combine_TE = jnp.einsum("TK,TKE->TE", routing.weights_TK,
                            jax.nn.one_hot(routing.experts_TK, E, dtype=jnp.float32))
    return jnp.einsum("TE,TED->TD", combine_TE.astype(y_TED.dtype), y_TED).astype(x_TD.dtype)


def _gmm_tpu(lhs_MD, rhs_EDN, group_sizes_E, interpret=False):
    """megablox `gmm` (TPU Pallas kernel): rows padded to a whole m-tile, padding rows dropped."""
    from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

    M = lhs_MD.shape[0]
    tm = 128 if M >= 128 else max(8, -(-M // 8) * 8)
    pad = -M % tm
    lhs = jnp.pad(lhs_MD, ((0, pad), (0, 0)))
    tiling = (tm, min(128, rhs_EDN.shape[1]), min(128, rhs_EDN.shape[2]))
    # Mosaic refuses a bf16 matmul at 'highest' precision (a process-wide setting some callers,
    # this package's tests among them, make): the kernel's bf16 dots keep the default.
    call = lambda: megablox.gmm(lhs, rhs_EDN, group_sizes_E, lhs_MD.dtype, tiling, None, None,  # noqa: E731
                                False, interpret)
    if lhs.dtype == jnp.float32:
        return call()[:M]
    with jax.default_matmul_precision("default"):
        return call()[:M]


def grouped_matmul(lhs_MD, rhs_EDN, group_sizes_E, *, impl: str = "auto", interpret=False):
    """`lhs` rows in E consecutive groups, group e times `rhs[e]`: `[M, D] x [E, D, N] -> [M, N]`.

    Args:
      impl: 'ragged_dot' (`jax.lax.ragged_dot`, every backend), 'megablox' (the TPU Pallas
        kernel), or 'auto' (megablox on a TPU when D and N are multiples of 128, ragged_dot
        otherwise).
    """
    if impl == "auto":
        # megablox tiles D and N in 128 lanes (its backward kernels too): narrower experts, as
        # in the small test configs, go through ragged_dot.
        lanes = rhs_EDN.shape[1] % 128 == 0 and rhs_EDN.shape[2] % 128 == 0
        impl = "megablox" if backend() == "tpu" and lanes else "ragged_dot"
    if impl == "megablox":
        return _gmm_tpu(lhs_MD, rhs_EDN, group_sizes_E, interpret)
    if impl != "ragged_dot":
        raise ValueError(f"grouped_matmul impl={impl!r} is not one of ('auto', 'ragged_dot', "
                         "'megablox')")
    return jax.lax.ragged_dot(lhs_MD, rhs_EDN, group_sizes_E)


def sort_by_expert(experts_TK, num_experts: int):
    """The dropless dispatch plan: `(order [T*K], group_sizes [E])`.

    `order` lists the flattened (token, slot) assignments grouped by expert (stable: tokens
    keep their order inside a group); `order // K` is the token each sorted row comes from.
    """
    flat = experts_TK.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return order, group_sizes


def experts_dropless(x_TD, routing: Routing, wi_EDX, wo_EFD, *, act: Callable,
                     gated: bool = True, gmm_impl: str = "auto"):
    """Dropless experts: sort the T*K assignments by expert, two grouped matmuls, unsort, combine.

    Same arguments and result as `experts_dense`; `gmm_impl` as in `grouped_matmul`.
    """
    T, K = routing.experts_TK.shape
    E, F = wo_EFD.shape[0], wo_EFD.shape[1]
    order, group_sizes = sort_by_expert(routing.experts_TK, E)
    x_MD = jnp.take(x_TD, order // K, axis=0)
    h_MX = grouped_matmul(x_MD, wi_EDX, group_sizes, impl=gmm_impl)
    y_MD = grouped_matmul(_ffn_dense(h_MX, F, act, gated).astype(x_TD.dtype), wo_EFD,
                          group_sizes, impl=gmm_impl)
    y_TKD = jnp.zeros_like(y_MD).at[order].set(y_MD).reshape(T, K, -1)
    return jnp.einsum("TKD,TK->TD", y_TKD, routing.weights_TK.astype(y_TKD.dtype)).astype(x_TD.dtype)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C, the slots per expert: `ceil(capacity_factor * T * K / E)` (at least 1)."""
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be > 0; got {capacity_factor!r}")
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def capacity_slots(experts_TK, num_experts: int, capacity: int):
    """Slot of each assignment in its expert's buffer, `[T, K]`, and whether it fits.

    Slots fill in slot-major order (all first choices, then all second choices, ...), tokens in
    order within a choice.
    """
    T, K = experts_TK.shape
    onehot_MKE = jax.nn.one_hot(experts_TK.T.reshape(-1), num_experts, dtype=jnp.int32)
    pos_M = (jnp.cumsum(onehot_MKE, axis=0) * onehot_MKE).sum(-1) - 1
    pos_TK = pos_M.reshape(K, T).T
    return pos_TK, pos_TK < capacity


def experts_capacity(x_TD, routing: Routing, wi_EDX, wo_EFD, *, act: Callable,
                     gated: bool = True, capacity_factor: float = 1.25):
    """Capacity-limited experts: a `[E, C, D]` buffer, overflow dropped.

    Same arguments as `experts_dense`, plus `capacity_factor`.
    Returns:
      `(y [T, D], dropped)`: dropped is the int32 number of (token, expert) assignments that
      found their expert full (their weight is lost; the residual path still carries the token).
    """
    T, K = routing.experts_TK.shape
    E, F = wo_EFD.shape[0], wo_EFD.shape[1]
    C = expert_capacity(T, K, E, capacity_factor)
    pos_TK, fits_TK = capacity_slots(routing.experts_TK, E, C)
    slot_TK = jnp.where(fits_TK, routing.experts_TK * C + pos_TK, E * C)     # E*C: dropped
    tokens_TK = jnp.broadcast_to(jnp.arange(T)[:, None], (T, K))
    buf = jnp.zeros((E * C, x_TD.shape[1]), x_TD.dtype).at[slot_TK.reshape(-1)].set(
        x_TD[tokens_TK.reshape(-1)], mode="drop", unique_indices=True)
    h_ECX = jnp.einsum("ECD,EDX->ECX", buf.reshape(E, C, -1), wi_EDX)
    y_ECD = jnp.einsum("ECF,EFD->ECD", _ffn_dense(h_ECX, F, act, gated).astype(x_TD.dtype), wo_EFD)
    y_TKD = jnp.take(y_ECD.reshape(E * C, -1), slot_TK, axis=0, mode="fill", fill_value=0)
    y = jnp.einsum("TKD,TK->TD", y_TKD, routing.weights_TK.astype(y_TKD.dtype))
    return y.astype(x_TD.dtype), jnp.sum(~fits_TK).astype(jnp.int32)


def tokens_per_expert(experts_TK, num_experts: int):
    """int32 `[E]`: how many (token, slot) assignments each expert received."""
    return jnp.bincount(experts_TK.reshape(-1), length=num_experts).astype(jnp.int32)


def load_balancing_loss(routing: Routing):
    """Switch / Mixtral auxiliary loss `E * sum_{k,e} f_{k,e} P_e` (transformers' form).

    `f_{k,e}`: fraction of tokens whose k-th choice is e; `P_e`: mean softmax score of e. Equals K
    when the routing is perfectly uniform; larger when unbalanced. Gradients reach the router
    through P (the choice itself is discrete).
    """
    E = routing.scores_TE.shape[-1]
    f_KE = jax.nn.one_hot(routing.experts_TK, E, dtype=jnp.float32).mean(0)
    return E * jnp.sum(f_KE * routing.scores_TE.mean(0)[None, :])


def router_z_loss(routing: Routing):
    """ST-MoE's router z-loss: mean over tokens of `logsumexp(logits)^2`."""
    return jnp.mean(jax.nn.logsumexp(routing.logits_TE, axis=-1) ** 2)
