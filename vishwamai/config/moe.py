"""The mixture-of-experts fields of `ModelConfig`: their checks and their Hugging Face keys.

Kept apart from `base` (the dataclass) and `hf_keys` (the dense families) so each stays short;
both call in here. Families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE (`MOE_HF_MODEL_TYPES`).
"""
from __future__ import annotations

from vishwamai import validate

QK_NORMS = ("none", "head", "full")  # RMSNorm of q and k: per head over H (Qwen3), over N*H (OLMoE)
ROUTER_SCORINGS = ("softmax", "sigmoid")
MOE_IMPLS = ("dropless", "capacity", "dense")  # see vishwamai.kernels.moe
MOE_HF_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
MOE_HF_ARCHITECTURES = {
    "MixtralForCausalLM": "mixtral", "MixtralModel": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen2MoeModel": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe", "Qwen3MoeModel": "qwen3_moe",
    "OlmoeForCausalLM": "olmoe", "OlmoeModel": "olmoe",
}
MOE_CAUSAL_LM = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}
MOE_HF_DEFAULTS = {
    "mixtral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "sliding_window": None, "num_local_experts": 8,
                "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001},
    "qwen2_moe": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                  "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "use_sliding_window": False,
                  "sliding_window": None, "max_window_layers": 28, "qkv_bias": True,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "num_experts": 60, "num_experts_per_tok": 4, "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
    "qwen3_moe": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                  "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 4,
                  "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "use_sliding_window": False,
                  "sliding_window": None, "attention_bias": False, "moe_intermediate_size": 768,
                  "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
    "olmoe": {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 2048,
              "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": None,
              "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "attention_bias": False, "clip_qkv": None,
              "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False,
              "router_aux_loss_coef": 0.01},
}


def validate_moe(cfg) -> None:
    """The q/k-norm and MoE fields of a `ModelConfig`: the MoE ones checked only as far as they matter
    (num_experts > 0). Raises `InputError` naming the field and the accepted values."""
    validate.one_of("ModelConfig.qk_norm", cfg.qk_norm, QK_NORMS)
    if isinstance(cfg.num_experts, bool) or not isinstance(cfg.num_experts, int) or \
            cfg.num_experts < 0:
        validate.fail("ModelConfig.num_experts", cfg.num_experts,
                      "an int >= 0 (0: dense MLP)")
    if not cfg.num_experts:
        return
    validate.positive_int("ModelConfig.num_experts_per_tok", cfg.num_experts_per_tok)
    if cfg.num_experts_per_tok > cfg.num_experts:
        raise validate.InputError(
            f"ModelConfig.num_experts_per_tok={cfg.num_experts_per_tok} (top-k) must not "
            f"exceed num_experts={cfg.num_experts}")
    for f in ("moe_mlp_dim", "shared_expert_dim"):
        if getattr(cfg, f) is not None:
            validate.positive_int(f"ModelConfig.{f}", getattr(cfg, f))
    for f in ("first_dense_layers", "num_shared_experts"):
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            validate.fail(f"ModelConfig.{f}", v, "an int >= 0")
    if cfg.first_dense_layers >= cfg.num_layers:
        raise validate.InputError(
            f"ModelConfig.first_dense_layers={cfg.first_dense_layers} must be below "
            f"num_layers={cfg.num_layers} (num_experts=0 is the dense model)")
    if cfg.first_dense_layers and cfg.scan_layers:
        raise validate.InputError(
            f"ModelConfig.first_dense_layers={cfg.first_dense_layers} needs scan_layers=False "
            "(a scan repeats one block; the dense and MoE blocks differ)")
    validate.one_of("ModelConfig.router_scoring", cfg.router_scoring, ROUTER_SCORINGS)
    validate.one_of("ModelConfig.moe_impl", cfg.moe_impl, MOE_IMPLS)
    for f in ("norm_topk_prob", "router_bias", "shared_expert_gate"):
        validate.boolean(f"ModelConfig.{f}", getattr(cfg, f))
    if isinstance(cfg.capacity_factor, bool) or not isinstance(
            cfg.capacity_factor, (int, float)) or not cfg.capacity_factor > 0:
        validate.fail("ModelConfig.capacity_factor", cfg.capacity_factor, "a number > 0")
    validate.positive("ModelConfig.routed_scaling_factor", cfg.routed_scaling_factor)
    for f in ("router_aux_loss_coef", "router_z_loss_coef"):
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            validate.fail(f"ModelConfig.{f}", v, "a number >= 0")
    validate.positive_int("ModelConfig.router_n_group", cfg.router_n_group)
    validate.positive_int("ModelConfig.router_topk_group", cfg.router_topk_group)
    if cfg.num_experts % cfg.router_n_group or \
            cfg.router_topk_group > cfg.router_n_group:
        raise validate.InputError(
            f"ModelConfig.router_n_group={cfg.router_n_group} must divide num_experts="
            f"{cfg.num_experts} and be >= router_topk_group={cfg.router_topk_group}")
    if cfg.router_n_group > 1 and cfg.num_experts_per_tok > (
            cfg.router_topk_group * cfg.num_experts // cfg.router_n_group):
        raise validate.InputError(
            f"ModelConfig.num_experts_per_tok={cfg.num_experts_per_tok} exceeds the experts "
            f"in router_topk_group={cfg.router_topk_group} groups")


def hf_moe_fields(d, model_type, hf_int, refuse) -> dict:
    """The MoE (and q/k-norm) fields of a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE config
    (`hf_int`, `refuse`: `hf_keys`' readers, so errors read alike)."""
    if model_type not in MOE_HF_MODEL_TYPES:
        return {}
    # transformers 5.x writes `num_local_experts` for every family; older files `num_experts`
    E = hf_int(d, "num_local_experts" if d.get("num_local_experts") is not None
                else "num_experts")
    out = {"num_experts": E, "num_experts_per_tok": hf_int(d, "num_experts_per_tok"),
           "router_aux_loss_coef": float(d.get("router_aux_loss_coef") or 0.0),
           "norm_topk_prob": True if model_type == "mixtral" else bool(d["norm_topk_prob"])}
    if model_type in ("qwen2_moe", "qwen3_moe"):
        if d.get("decoder_sparse_step", 1) != 1:
            refuse("decoder_sparse_step", d["decoder_sparse_step"], "every block is MoE here")
        if d.get("mlp_only_layers"):
            refuse("mlp_only_layers", d["mlp_only_layers"], "every block is MoE here")
        out["moe_mlp_dim"] = hf_int(d, "moe_intermediate_size")
    if model_type == "qwen2_moe" and d.get("shared_expert_intermediate_size"):
        out.update(num_shared_experts=1, shared_expert_gate=True,
                   shared_expert_dim=hf_int(d, "shared_expert_intermediate_size"))
    if model_type == "qwen3_moe":
        out["qk_norm"] = "head"
    if model_type == "olmoe":
        if d.get("clip_qkv") is not None:
            refuse("clip_qkv", d["clip_qkv"], "clipping q/k/v is not implemented")
        out["qk_norm"] = "full"
    return out


def to_hf_moe(cfg, model_type: str, need) -> dict:
    """The MoE keys of `_to_hf`; `need(field, ok, accepted)` raises for what the family lacks."""
    moe = model_type in MOE_HF_MODEL_TYPES
    need("num_experts", bool(cfg.num_experts) == moe, "> 0" if moe else "0 (a dense family)")
    need("qk_norm", cfg.qk_norm == {"qwen3_moe": "head", "olmoe": "full"}.get(model_type, "none"),
         {"qwen3_moe": "'head'", "olmoe": "'full'"}.get(model_type, "'none'"))
    if not moe:
        return {}
    need("first_dense_layers", cfg.first_dense_layers == 0, "0")
    need("router_scoring", cfg.router_scoring == "softmax", "'softmax'")
    need("router_bias", not cfg.router_bias, "False")
    need("router_n_group", cfg.router_n_group == 1, "1")
    need("routed_scaling_factor", cfg.routed_scaling_factor == 1.0, "1.0")
    need("use_bias", not cfg.use_bias, "False")
    need("qkv_bias", cfg.qkv_bias == (model_type == "qwen2_moe"), str(model_type == "qwen2_moe"))
    shared = model_type == "qwen2_moe"
    need("num_shared_experts", cfg.num_shared_experts == int(shared), str(int(shared)))
    need("shared_expert_gate", cfg.shared_expert_gate == shared, str(shared))
    out = {"num_experts_per_tok": cfg.num_experts_per_tok,
           "router_aux_loss_coef": cfg.router_aux_loss_coef}
    if model_type in ("mixtral", "olmoe"):
        need("moe_mlp_dim", cfg.expert_mlp_dim == cfg.mlp_dim, f"None or mlp_dim={cfg.mlp_dim}")
    else:
        out.update(moe_intermediate_size=cfg.expert_mlp_dim, decoder_sparse_step=1,
                   mlp_only_layers=[], use_sliding_window=False, sliding_window=None)
    if model_type == "mixtral":
        need("norm_topk_prob", cfg.norm_topk_prob, "True")
        out.update(num_local_experts=cfg.num_experts, sliding_window=None, router_jitter_noise=0.0)
        return out
    out.update(num_experts=cfg.num_experts, norm_topk_prob=cfg.norm_topk_prob)
    if model_type == "qwen2_moe":
        out.update(qkv_bias=True, max_window_layers=cfg.num_layers,
                   shared_expert_intermediate_size=cfg.shared_expert_dim
                   or cfg.expert_mlp_dim)
    else:
        out.update(attention_bias=False)
        if model_type == "olmoe":
            out["clip_qkv"] = None
    return out
