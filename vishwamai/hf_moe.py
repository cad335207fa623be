"""Hugging Face names of the mixture-of-experts tensors (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE).

`vishwamai.hf` maps the rest of the model; these rules replace its dense MLP rule in MoE blocks
and add the q/k norms. Per MoE layer i (`h` = `model.layers.i.`, `m` = `h + 'mlp.'`):

    m.gate.weight [E, D]                              -> layer_i/moe/router/kernel [D, E]
    transformers 5.x fused layout (what it writes):
      m.experts.gate_up_proj [E, 2F, D] (gate | up)   -> layer_i/moe/wi [E, D, 2, F]
      m.experts.down_proj [E, D, F]                   -> layer_i/moe/wo [E, F, D]
    per-expert layout of older checkpoints (read only):
      m.experts.j.{gate,up,down}_proj.weight          (Qwen2-MoE, Qwen3-MoE, OLMoE)
      h.block_sparse_moe.experts.j.{w1,w3,w2}.weight  (Mixtral: gate, up, down; its router is
                                                       h.block_sparse_moe.gate.weight)
    Qwen2-MoE's shared expert:
      m.shared_expert.{gate,up,down}_proj.weight      -> layer_i/moe/shared_experts/{wi, wo}/kernel
      m.shared_expert_gate.weight [1, D]              -> layer_i/moe/shared_gate/kernel [D, 1]
    q/k norms: h.self_attn.{q,k}_norm.weight [H] (Qwen3) or [N*H], [K*H] (OLMoE)
                                                      -> layer_i/attention/{query,key}_norm/scale

Each rule is a tuple `(hf names, hf shapes, our paths, to_ours, to_hf)` (`vishwamai.hf._Rule`).
"""
from __future__ import annotations

import numpy as np

MOE_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
LAYOUTS = ("fused", "per_expert")


def expert_layout(names) -> str:
    """'per_expert' when the checkpoint stores experts one by one, else 'fused'."""
    return "per_expert" if any(".experts.0." in n for n in names) else "fused"


def _wi_to_ours(gate_up_E2FD, E, F, D):
    return gate_up_E2FD.reshape(E, 2, F, D).transpose(0, 3, 1, 2)


def _wi_to_hf(wi_ED2F, E, F, D):
    return wi_ED2F.transpose(0, 2, 3, 1).reshape(E, 2 * F, D)


def moe_rules(cfg, model_type: str, h: str, layer: str, layout: str = "fused") -> list[tuple]:
    """The rules for the MoE feed-forward of one block (router, experts, shared expert)."""
    E, D, F = cfg.num_experts, cfg.hidden_dim, cfg.expert_mlp_dim
    moe = (layer, "moe")
    legacy_mixtral = model_type == "mixtral" and layout == "per_expert"
    m = h + ("block_sparse_moe." if legacy_mixtral else "mlp.")
    rules = [((m + "gate.weight",), ((E, D),), (moe + ("router", "kernel"),),
              lambda xs: [xs[0].T], lambda xs: [xs[0].T])]
    if layout == "fused":
        rules.append(((m + "experts.gate_up_proj", m + "experts.down_proj"),
                      ((E, 2 * F, D), (E, D, F)), (moe + ("wi",), moe + ("wo",)),
                      lambda xs: [_wi_to_ours(xs[0], E, F, D), xs[1].transpose(0, 2, 1)],
                      lambda xs: [_wi_to_hf(xs[0], E, F, D), xs[1].transpose(0, 2, 1)]))
    elif layout == "per_expert":
        g, u, d = ("w1", "w3", "w2") if model_type == "mixtral" else (
            "gate_proj", "up_proj", "down_proj")
        names = tuple(f"{m}experts.{j}.{p}.weight" for p in (g, u, d) for j in range(E))
        shapes = ((F, D),) * (2 * E) + ((D, F),) * E

        def to_ours(xs):
            gate, up, down = np.stack(xs[:E]), np.stack(xs[E:2 * E]), np.stack(xs[2 * E:])
            return [np.stack([gate, up], axis=1).transpose(0, 3, 1, 2), down.transpose(0, 2, 1)]

        def to_hf(xs):
            wi, wo = xs
            return ([wi[j, :, 0, :].T for j in range(E)] + [wi[j, :, 1, :].T for j in range(E)]
                    + [wo[j].T for j in range(E)])

        rules.append((names, shapes, (moe + ("wi",), moe + ("wo",)), to_ours, to_hf))
    else:
        raise ValueError(f"expert layout={layout!r} is not one of {LAYOUTS}")
    if cfg.num_shared_experts:
        S = cfg.shared_expert_dim or cfg.num_shared_experts * F
        s = m + "shared_expert."
        sh = moe + ("shared_experts",)
        rules.append(((s + "gate_proj.weight", s + "up_proj.weight"), ((S, D), (S, D)),
                      (sh + ("wi", "kernel"),),
                      lambda xs: [np.stack([xs[0].T, xs[1].T], axis=1)],
                      lambda xs: [xs[0][:, 0, :].T, xs[0][:, 1, :].T]))
        rules.append(((s + "down_proj.weight",), ((D, S),), (sh + ("wo", "kernel"),),
                      lambda xs: [xs[0].T], lambda xs: [xs[0].T]))
        if cfg.shared_expert_gate:
            rules.append(((m + "shared_expert_gate.weight",), ((1, D),),
                          (moe + ("shared_gate", "kernel"),),
                          lambda xs: [xs[0].T], lambda xs: [xs[0].T]))
    return rules


def qk_norm_rules(cfg, h: str, layer: str) -> list[tuple]:
    """The q/k RMSNorm scales of one block (none when `cfg.qk_norm` is 'none')."""
    if cfg.qk_norm == "none":
        return []
    H = cfg.head_dim
    q, k = (H, H) if cfg.qk_norm == "head" else (cfg.num_heads * H, cfg.num_kv_heads * H)
    same = (lambda xs: xs, lambda xs: xs)
    return [((h + "self_attn.q_norm.weight",), ((q,),), ((layer, "attention", "query_norm", "scale"),),
             *same),
            ((h + "self_attn.k_norm.weight",), ((k,),), ((layer, "attention", "key_norm", "scale"),),
             *same)]
