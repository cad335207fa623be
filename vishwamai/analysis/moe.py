"""Mixture-of-experts accounting: parameters (total vs active), FLOPs per token (routed, shared,
router), memory (expert weights and their optimizer state vs activations, the capacity buffer),
all-to-all bytes of expert parallelism, and the imbalance a router produces.

Shape letters: D model width, E routed experts, K experts per token, F one expert's width,
S the shared experts' total width, L_moe MoE blocks, C slots per expert (capacity path).
Conventions as in `vishwamai.analysis.flops` (a multiply-add is 2 FLOPs; training = 3x forward;
model FLOPs only). A token's routed FLOPs are those of its K experts: the dropless path
computes exactly those, the capacity path computes all E*C slots (C*E >= T*K, padding
included), the dense reference every expert for every token.

Checked against the real parameter tree (tests/test_moe_config.py: the published totals), the
model cards' active counts, and XLA's `cost_analysis()` of a compiled tiny_moe step
(tests/test_moe_analysis.py).
"""
from __future__ import annotations

import math

from vishwamai import validate
from vishwamai.analysis.flops import flops
from vishwamai.analysis.params import bytes_per, count_params
from vishwamai.config import ModelConfig, as_config


def _widths(c: ModelConfig):
    D, Fe = c.hidden_dim, c.expert_mlp_dim
    m = 3 if c.gated_mlp else 2  # matrices per expert
    S = (c.shared_expert_dim or c.num_shared_experts * Fe) if c.num_shared_experts else 0
    return D, Fe, m, S


def moe_params(cfg: ModelConfig | str) -> dict:
    """Total and active parameters.

    Returns:
      dict of ints: total (the tree's count), expert (one routed expert), routed (all routed
      experts, all MoE blocks), router, shared (shared experts and their gate), non_routed
      (total - routed), active (what one token uses: total minus the E - K experts it skips in
      every MoE block; the embedding table counted whole, as the model cards count it), and
      active_fraction (float).
    """
    c = as_config(cfg)
    total = count_params(c)["total"]
    if not c.num_experts:
        return {"total": total, "expert": 0, "routed": 0, "router": 0, "shared": 0,
                "non_routed": total, "active": total, "active_fraction": 1.0}
    D, Fe, m, S = _widths(c)
    L = c.num_moe_layers
    expert = m * D * Fe
    shared = m * D * S + (D if c.shared_expert_gate else 0)
    out = {"total": total, "expert": expert, "routed": L * c.num_experts * expert,
           "router": L * D * c.num_experts, "shared": L * shared}
    out["non_routed"] = total - out["routed"]
    out["active"] = total - L * (c.num_experts - c.num_experts_per_tok) * expert
    out["active_fraction"] = out["active"] / total
    return out


def ffn_flops_per_token(cfg: ModelConfig | str) -> dict:
    """Forward FLOPs of the feed-forward layers per token, all blocks.

    Returns:
      dict: routed (2 * K experts' weights per MoE block), shared, router (2*D*E per MoE
      block), dense (the MLPs of the blocks before the first MoE block, or of every block of a
      dense model), total.
    """
    c = as_config(cfg)
    D, F = c.hidden_dim, c.mlp_dim
    dense = 2 * (c.num_layers - c.num_moe_layers) * (3 if c.gated_mlp else 2) * D * F
    if not c.num_experts:
        return {"routed": 0, "shared": 0, "router": 0, "dense": dense, "total": dense}
    D, Fe, m, S = _widths(c)
    L = c.num_moe_layers
    out = {"routed": 2 * L * c.num_experts_per_tok * m * D * Fe,
           "shared": 2 * L * (m * D * S + (D if c.shared_expert_gate else 0)),
           "router": 2 * L * D * c.num_experts, "dense": dense}
    out["total"] = out["routed"] + out["shared"] + out["router"] + out["dense"]
    return out


def moe_flops_per_token(cfg: ModelConfig | str, seq_len: int, *, mode: str = "train",
                        convention: str = "causal") -> dict:
    """Model FLOPs per token of a MoE (or dense) model, split by where they go.

    Args:
      seq_len: T, for the attention term.
      mode: 'train' (3x forward) or 'forward'.
      convention: how causal attention is counted ('causal' half square, 'full', 'exact'; see
        `vishwamai.analysis.flops`). Published runs state theirs: name it when comparing.
    Returns:
      dict: routed, shared, router, dense_ffn, attention_proj (q, k, v, o), attention (the
      score and value matmuls), logits, total, and six_n_active (6 * active matmul weights,
      the textbook approximation, for comparison).
    """
    c = as_config(cfg)
    validate.positive_int("seq_len", seq_len)
    validate.one_of("mode", mode, ("train", "forward"))
    mult = 3 if mode == "train" else 1
    f = flops(c, batch=1, seq_len=seq_len, mode=mode, convention=convention, remat="none")
    ffn = ffn_flops_per_token(c)
    D, N, K, H, L = c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.num_layers
    out = {"routed": mult * ffn["routed"], "shared": mult * ffn["shared"],
           "router": mult * ffn["router"], "dense_ffn": mult * ffn["dense"],
           "attention_proj": mult * 2 * L * D * (2 * N + 2 * K) * H,
           "attention": f["attention"] / seq_len,
           "logits": mult * 2 * D * c.vocab_size}
    out["total"] = sum(out.values())
    out["approx"] = (6 if mode == "train" else 2) * count_params(c)["matmul"]
    return out


def capacity_slots(cfg: ModelConfig | str, tokens: int, capacity_factor: float | None = None) -> int:
    """C, slots per expert for `tokens` tokens routed together (`kernels.moe.expert_capacity`)."""
    c = as_config(cfg)
    cf = c.capacity_factor if capacity_factor is None else capacity_factor
    if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not cf > 0:
        validate.fail("capacity_factor", cf, "a number > 0")
    return max(1, math.ceil(cf * tokens * c.num_experts_per_tok / c.num_experts))


def moe_memory(cfg: ModelConfig | str, *, batch: int, seq_len: int, expert_parallel: int = 1,
               optimizer_bytes_per_param: int = 8, impl: str | None = None) -> dict:
    """Bytes per device of the expert weights, their optimizer state, and the MoE activations.

    Args:
      batch, seq_len: the tokens one device routes per step (B*T).
      expert_parallel: devices the E experts are split over (each holds E / ep experts).
      optimizer_bytes_per_param: optimizer state per parameter (8: Adam's two f32 moments).
      impl: 'dropless' or 'capacity' (default the config's).
    Returns:
      dict of ints: expert_weights, expert_optimizer, non_expert_weights (replicated here),
      dispatch (one MoE block's routed activations: the gathered inputs, the expert hidden
      layer and outputs, for the T*K assignments (dropless) or E*C slots (capacity)),
      capacity_buffer (the `[E, C, D]` input buffer; 0 dropless), saved_activations (dispatch
      over all MoE blocks, what the backward pass keeps without remat), backward_transient
      (one block's gradients of the expert input, hidden layer and output while its backward
      runs), train_temporaries (saved_activations + backward_transient: the MoE share of a
      train step's temporaries).
    """
    c = as_config(cfg)
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    ep = validate.positive_int("expert_parallel", expert_parallel)
    if c.num_experts and c.num_experts % ep:
        raise validate.InputError(f"expert_parallel={ep} must divide num_experts="
                                  f"{c.num_experts}")
    impl = c.moe_impl if impl is None else validate.one_of("impl", impl,
                                                           ("dropless", "capacity"))
    p = moe_params(c)
    wb, ab = bytes_per(c.param_dtype), bytes_per(c.dtype)
    D, Fe, m, _ = _widths(c)
    T = batch * seq_len
    rows = T * c.num_experts_per_tok
    cap = 0
    if impl == "capacity" and c.num_experts:
        rows = c.num_experts * capacity_slots(c, T)
        cap = rows * D * ab
    per_row = D + (m - 1) * Fe + Fe + D  # input, gate|up, activation, output
    dispatch = rows * per_row * ab if c.num_experts else 0
    transient = rows * (2 * D + (m - 1) * Fe) * ab if c.num_experts else 0
    return {"expert_weights": p["routed"] // ep * wb,
            "expert_optimizer": p["routed"] // ep * optimizer_bytes_per_param,
            "non_expert_weights": p["non_routed"] * wb,
            "dispatch": dispatch, "capacity_buffer": cap,
            "saved_activations": c.num_moe_layers * dispatch,
            "backward_transient": transient,
            "train_temporaries": c.num_moe_layers * dispatch + transient}


def all_to_all_bytes(cfg: ModelConfig | str, *, tokens_per_device: int, expert_parallel: int,
                     mode: str = "train") -> dict:
    """Bytes each device sends in the expert-parallel all-to-alls of one step.

    Dispatch sends every assignment's D activations to the device holding its expert and
    combine sends the results back; a fraction (ep - 1) / ep of them leaves the device when the
    routing is uniform. Training repeats both in the backward pass (4 all-to-alls per MoE block;
    forward: 2).

    Returns:
      dict: per_all_to_all (bytes one device sends in one), count (all-to-alls per step),
      per_step (bytes one device sends per step).
    """
    c = as_config(cfg)
    validate.positive_int("tokens_per_device", tokens_per_device)
    ep = validate.positive_int("expert_parallel", expert_parallel)
    validate.one_of("mode", mode, ("train", "forward"))
    one = tokens_per_device * c.num_experts_per_tok * c.hidden_dim * bytes_per(c.dtype)
    one = one * (ep - 1) // ep
    count = c.num_moe_layers * (4 if mode == "train" else 2)
    return {"per_all_to_all": one, "count": count, "per_step": one * count}


def imbalance(tokens_per_expert) -> float:
    """max / mean of the tokens each expert received (1.0: perfectly balanced)."""
    import numpy as np

    t = np.asarray(tokens_per_expert, dtype=np.float64)
    return float(t.max(-1).mean() / t.mean()) if t.size and t.mean() > 0 else 1.0


def all_to_all_time(cfg: ModelConfig | str, hardware, *, tokens_per_device: int,
                    expert_parallel: int, mode: str = "train") -> dict:
    """Seconds per step of the expert-parallel all-to-alls on `hardware`, per network tier.

    The `expert_parallel` chips are laid out as the planner lays a mesh axis
    (`vishwamai.analysis.network.axis_levels`, the axis in the data position): on a TPU slice
    over ICI rings, on GPUs inside the NVLink domain first and over InfiniBand beyond it. A
    uniform router sends each chip's assignments to all ep chips alike, so the share of a chip's
    bytes that crosses a level is the share of its destinations outside the groups below: with
    levels of n_1 (inner) and n_2 chips, (n_1 - 1) / (n_1 n_2) on the first and (n_2 - 1) / n_2
    on the second. Each level's bytes go at its per-chip bandwidth (one direction), levels one
    after another.

    Returns:
      dict: seconds (per step), per_tier ({tier: seconds}), bytes_per_step (one chip sends).
    """
    from vishwamai.analysis.hardware import get_chip
    from vishwamai.analysis.network import Mesh, axis_levels

    c = as_config(cfg)
    ep = validate.positive_int("expert_parallel", expert_parallel)
    a = all_to_all_bytes(c, tokens_per_device=tokens_per_device, expert_parallel=1, mode=mode)
    array = tokens_per_device * c.num_experts_per_tok * c.hidden_dim * bytes_per(c.dtype)
    levels = axis_levels(get_chip(hardware), Mesh(data=ep))["data"] if ep > 1 else []
    per_tier, inner, total = {}, 1, 0
    for lv in levels:
        outer = inner * lv.n
        share = (lv.n - 1) * inner / ep           # destinations in this level's group, not below
        t = a["count"] * array * share / lv.bandwidth
        per_tier[lv.tier] = per_tier.get(lv.tier, 0.0) + t
        total += a["count"] * array * share
        inner = outer
    return {"seconds": sum(per_tier.values()), "per_tier": per_tier, "bytes_per_step": total}


def memory_per_chip(cfg: ModelConfig | str, layout: str, chips: int, *, expert_parallel: int = 1,
                    **kw) -> dict:
    """`analysis.roofline.memory_per_chip` for a mixture of experts, with the E experts split
    over an `expert` mesh axis of `expert_parallel` chips and the rest of the mesh on `layout`.

    What changes against a dense model: the weights (and their gradients and moments) split
    over both axes for the routed experts, over the layout's axis only for the rest (the expert
    axis replicates them); FSDP gathers one block's non-expert weights and its `E / ep` experts;
    the batch splits over every chip but the tensor axis; a token's MLP activations are those
    of its K experts and the shared ones (width `K * F + S`), plus one block's dispatch buffers
    (the routed rows sorted by expert: `moe_memory`'s 'dispatch', in the train step's
    workspace; `expert_parallel` times that under expert parallelism, whose fixed-size
    all-to-all gives every chip room for all its peers' rows).

    Args:
      cfg, layout, chips, **kw: as `analysis.roofline.memory_per_chip` (`chips` counts every
        chip, the expert axis included).
      expert_parallel: chips the experts are split over (divides `chips` and E).
    Returns:
      dict of bytes per chip, the keys of `roofline.memory_per_chip` plus 'moe_dispatch'.
    """
    import dataclasses
    import importlib

    # the module (the package's `roofline` attribute is the function of that name)
    roofline = importlib.import_module("vishwamai.analysis.roofline")

    c = as_config(cfg)
    ep = validate.positive_int("expert_parallel", expert_parallel)
    chips = validate.positive_int("chips", chips)
    if chips % ep:
        raise validate.InputError(f"expert_parallel={ep} must divide chips={chips}")
    if c.num_experts and c.num_experts % ep:
        raise validate.InputError(f"expert_parallel={ep} must divide num_experts="
                                  f"{c.num_experts}")
    if not c.num_experts:
        if ep != 1:
            raise validate.InputError(f"expert_parallel={ep} needs a mixture-of-experts model; "
                                      f"{c.name} has num_experts=0")
        return roofline.memory_per_chip(c, layout, chips, **kw)
    D, Fe, m, S = _widths(c)
    rest = chips // ep                                   # the layout's axis
    # activations, logits, loss head: a dense model whose MLP is one token's K experts + shared
    dense = dataclasses.replace(c, num_experts=0, mlp_dim=c.num_experts_per_tok * Fe + S,
                                moe_mlp_dim=None, first_dense_layers=0, num_shared_experts=0,
                                shared_expert_dim=None)
    batch = kw.pop("batch")
    b_rest = batch // ep if batch % ep == 0 else batch   # the expert axis splits the batch too
    out = roofline.memory_per_chip(dense, layout, rest, batch=b_rest, **kw)
    mode = kw.get("mode", "train")
    p, n = moe_params(c), count_params(c)
    w = roofline._split_ways(c, layout, rest)
    routed_ways = ep * {"fsdp": w["embed"], "tensor": rest if Fe % rest == 0 else 1}.get(layout, 1)
    dense_chip = roofline.sharded_param_count(dense, layout, rest)
    dense_total = count_params(dense)["total"]
    # the non-routed weights split as the dense model's are (same layout), the experts apart
    non_routed_chip = (p["non_routed"] * dense_chip / dense_total)
    n_chip = p["routed"] / routed_ways + non_routed_chip
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    out["params"] = n_chip * pb
    if mode == "train":
        out["grads"] = n_chip * pb
        out["optimizer"] = roofline.optimizer_bytes(
            c, kw.get("optimizer", "adamw_param_dtype"))["total"] * n_chip / n["total"]
        b_chip = b_rest if layout == "tensor" else max(1, b_rest // rest)
        # Expert parallelism exchanges fixed-size chunks (`kernels.moe_ep`): each chip receives
        # room for every peer's T_loc * K rows, ep times one chip's assignments, and runs its
        # experts over all of them (the padding rows included).
        out["moe_dispatch"] = ep * moe_memory(c, batch=b_chip, seq_len=kw["seq_len"])["dispatch"]
    else:
        out["moe_dispatch"] = 0.0
    if layout == "fsdp" and w["embed"] > 1:
        per_layer_routed = p["routed"] / c.num_moe_layers
        out["gather"] = 2 * (n["per_layer"] - per_layer_routed * (1 - 1 / ep)) * cb
    out.pop("total")
    out["total"] = sum(out.values())
    return out
