"""Expert parallelism: the dropless experts with the E experts split over a mesh axis.

Under `shard_map`, each device holds `E / ep` consecutive experts and a slice of the tokens
(the batch is split over the data, fsdp and expert axes). Per MoE block:

  1. route locally; sort the local `T_loc * K` assignments by expert;
  2. dispatch: one `all_to_all` over the expert axis sends each assignment's `[D]` activations
     (and its expert id) to the device holding its expert;
  3. each device runs its experts on what it received (`ragged_dot`, as `experts_dropless`);
  4. combine: a second `all_to_all` returns the outputs; they are unsorted and weighted.

The all-to-all here exchanges fixed-size chunks: `T_loc * K` rows per peer, the most any peer can
receive, so no token is ever dropped (padding rows are sent as zeros and skipped). A
`ragged_all_to_all` sends only the real rows; XLA's CPU backend, which the tests run on, has
no kernel for it, so the fixed-size form is the one exercised here. Gradients flow through both
all-to-alls (each one's transpose is the reverse all-to-all).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vishwamai.kernels import moe as kmoe

EXPERT_AXIS = "expert"
TOKEN_AXES = ("data", "fsdp", EXPERT_AXIS)  # mesh axes the tokens are split over, when present


def expert_parallel_size(mesh=None, axis: str = EXPERT_AXIS) -> int:
    """Size of `axis` in `mesh` (default: the mesh in context); 1 when absent."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty or axis not in mesh.axis_names:
        return 1
    return dict(zip(mesh.axis_names, mesh.axis_sizes))[axis]


def mesh_size(mesh=None) -> int:
    """Devices in `mesh` (default: the mesh in context); 1 without one."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty:
        return 1
    n = 1
    for s in mesh.axis_sizes:
        n *= s
    return n


def check_expert_split(num_experts: int, ep: int) -> None:
    """`ValueError` naming both numbers unless the expert axis divides the experts."""
    if num_experts % ep:
        raise ValueError(f"num_experts={num_experts} is not divisible by the expert mesh axis "
                         f"(size {ep}): each device must hold the same number of experts")


def _local(x_TD, weights_TK, experts_TK, wi_EDX, wo_EFD, *, act, gated, axis, ep):
    """One device's share: its tokens, all of whose assignments go through the all-to-alls."""
    T, K = experts_TK.shape
    E_loc, F = wo_EFD.shape[0], wo_EFD.shape[1]
    M = T * K
    order, group_sizes = kmoe.sort_by_expert(experts_TK, E_loc * ep)
    x_MD = jnp.take(x_TD, order // K, axis=0)
    e_M = experts_TK.reshape(-1)[order]
    dest_M = e_M // E_loc
    send_sizes = group_sizes.reshape(ep, E_loc).sum(-1)
    starts = jnp.cumsum(send_sizes) - send_sizes
    slot_M = jnp.arange(M) - starts[dest_M]                       # row within its peer's chunk
    flat = dest_M * M + slot_M
    send = jnp.zeros((ep * M, x_TD.shape[1]), x_TD.dtype).at[flat].set(x_MD)
    send_e = jnp.full((ep * M,), E_loc, jnp.int32).at[flat].set(e_M % E_loc)   # E_loc: padding
    recv = jax.lax.all_to_all(send.reshape(ep, M, -1), axis, 0, 0, tiled=False)
    recv_e = jax.lax.all_to_all(send_e.reshape(ep, M), axis, 0, 0, tiled=False).reshape(-1)
    # run the local experts on the received rows (padding rows sorted last, into no group)
    r_order = jnp.argsort(recv_e, stable=True)
    r_sizes = jnp.bincount(recv_e, length=E_loc + 1)[:E_loc].astype(jnp.int32)
    rows = jnp.take(recv.reshape(ep * M, -1), r_order, axis=0)
    h = kmoe.grouped_matmul(rows, wi_EDX, r_sizes, impl="ragged_dot")
    h = kmoe._ffn_dense(h, F, act, gated).astype(x_TD.dtype)
    y = kmoe.grouped_matmul(h, wo_EFD, r_sizes, impl="ragged_dot")
    y = jnp.zeros_like(y).at[r_order].set(y)
    back = jax.lax.all_to_all(y.reshape(ep, M, -1), axis, 0, 0, tiled=False).reshape(ep * M, -1)
    y_MD = back[flat]
    y_TKD = jnp.zeros_like(y_MD).at[order].set(y_MD).reshape(T, K, -1)
    return jnp.einsum("TKD,TK->TD", y_TKD, weights_TK.astype(y_TKD.dtype)).astype(x_TD.dtype)


def experts_dropless_ep(x_TD, routing: kmoe.Routing, wi_EDX, wo_EFD, *, act: Callable,
                        gated: bool = True, mesh=None, axis: str = EXPERT_AXIS):
    """`experts_dropless` with the experts split over the mesh axis `axis` (all-to-all dispatch).

    Args:
      x_TD, routing, wi_EDX, wo_EFD, act, gated: as `kernels.moe.experts_dropless` (global
        arrays; T must divide by the product of the token axes present in the mesh).
      mesh: the mesh (default: the one in context, `jax.set_mesh`).
      axis: the mesh axis that splits the experts.
    Returns:
      `[T, D]`, equal to `experts_dropless` up to summation order.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    ep = expert_parallel_size(mesh, axis)
    check_expert_split(wi_EDX.shape[0], ep)
    tok = tuple(a for a in TOKEN_AXES if a in mesh.axis_names)
    n_tok = 1
    for a in tok:
        n_tok *= dict(zip(mesh.axis_names, mesh.axis_sizes))[a]
    if x_TD.shape[0] % n_tok:
        raise ValueError(f"tokens T={x_TD.shape[0]} must divide by the token axes {tok} "
                         f"(product {n_tok}) for expert parallelism")
    t_spec = P(tok, None)
    w_spec = P(axis, None, None)

    def local(x, w, e, wi, wo):
        return _local(x, w, e, wi, wo, act=act, gated=gated, axis=axis, ep=ep)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(t_spec, t_spec, t_spec, w_spec, w_spec),
                       out_specs=t_spec, check_vma=False)
    return fn(x_TD, routing.weights_TK, routing.experts_TK, wi_EDX, wo_EFD)


def _token_axes(mesh, T: int):
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    tok = tuple(a for a in TOKEN_AXES if a in sizes)
    n_tok = 1
    for a in tok:
        n_tok *= sizes[a]
    if T % n_tok:
        raise ValueError(f"tokens T={T} must divide by the token axes {tok} (product {n_tok}) "
                         "to dispatch experts on each device")
    return tok, sizes


def experts_dropless_sharded(x_TD, routing: kmoe.Routing, wi, wo_EFD, *, act: Callable,
                             gated: bool = True, mesh=None, gmm_impl: str = "auto"):
    """`experts_dropless` under a mesh without an expert axis: every device dispatches its own
    tokens (split over the data and fsdp axes) through all E experts, with the experts' hidden
    width split over 'tensor' when the mesh has that axis (the partial outputs summed). The
    weights enter whole along D (FSDP gathers them, as it gathers a dense layer's).

    A Pallas kernel (megablox `gmm` on a TPU) cannot be partitioned by the compiler; under
    `shard_map` each device runs it on its own rows, and no device sorts another's tokens.

    Args:
      wi: `[E, D, 2, F]` (gated: gate, up) or `[E, D, F]`, as the layer holds it.
      the rest: as `kernels.moe.experts_dropless`.
    Returns:
      `[T, D]`, equal to `experts_dropless` up to summation order.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    tok, sizes = _token_axes(mesh, x_TD.shape[0])
    tp = "tensor" if sizes.get("tensor", 1) > 1 else None
    if tp and wo_EFD.shape[1] % sizes["tensor"]:
        raise ValueError(f"the experts' width F={wo_EFD.shape[1]} is not divisible by the "
                         f"tensor axis (size {sizes['tensor']})")
    if tp and gated and wi.ndim != 4:
        raise ValueError(f"a gated wi split over 'tensor' must be [E, D, 2, F] (gate and up "
                         f"apart); got shape {wi.shape}")
    t_spec = P(tok, None)
    wi_spec = P(*([None] * (wi.ndim - 1)), tp)
    wo_spec = P(None, tp, None)

    def local(x, w, e, wi_l, wo_l):
        r = kmoe.Routing(weights_TK=w, experts_TK=e, scores_TE=None, logits_TE=None)
        y = kmoe.experts_dropless(x, r, wi_l.reshape(wi_l.shape[0], wi_l.shape[1], -1), wo_l,
                                  act=act, gated=gated, gmm_impl=gmm_impl)
        return jax.lax.psum(y, tp) if tp else y

    fn = jax.shard_map(local, mesh=mesh, in_specs=(t_spec, t_spec, t_spec, wi_spec, wo_spec),
                       out_specs=t_spec, check_vma=False)
    return fn(x_TD, routing.weights_TK, routing.experts_TK, wi, wo_EFD)
