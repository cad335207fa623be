"""Published mixture-of-experts training runs, recomputed from the FLOP model.

DeepSeek-V3 is no preset (its multi-head latent attention is not implemented here); its
training FLOPs per token come from its published config (`DEEPSEEK_V3`, HF
`deepseek-ai/DeepSeek-V3` config.json) by the same conventions as `vishwamai.analysis.flops`:
2 FLOPs per multiply-add, training = 3x forward, the embedding lookup free, attention
`4 * N * (H_qk + H_v) / 2 * T` per token per layer for the score and value matmuls counted over
the causal half ('causal') or the whole square ('full'). `mtp` adds the multi-token-prediction
module (one more MoE block, its `2D -> D` projection and a second pass through the head), which
Megatron's FLOP formula counts.

Each run states tokens/s per chip (and TFLOP/s per chip where published); `reproduce` returns
the model FLOPs per token either implies, ours under each convention, and their ratio.
"""
from __future__ import annotations

from vishwamai.analysis.hardware import get_chip, peak_flops
from vishwamai.analysis.moe import moe_flops_per_token

CONVENTIONS = ("causal", "full")

# deepseek-ai/DeepSeek-V3 config.json (the published values this count uses).
DEEPSEEK_V3 = {"hidden_size": 7168, "num_hidden_layers": 61, "first_k_dense_replace": 3,
               "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1,
               "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
               "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
               "vocab_size": 129280, "num_nextn_predict_layers": 1}


def deepseek_v3_flops_per_token(seq_len: int, convention: str = "causal", *,
                                mtp: bool = False) -> dict:
    """Training model FLOPs per token of DeepSeek-V3 from its published config.

    Returns:
      dict: active_matmul_params (per token: MLA projections, 3 dense MLPs, router + 8 routed +
      1 shared expert in 58 MoE blocks, the head; plus the MTP module with `mtp`), weights
      (6x those), attention, total.
    """
    c = DEEPSEEK_V3
    D, L, N = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    h_qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    mla = (D * c["q_lora_rank"] + c["q_lora_rank"] * N * h_qk
           + D * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
           + c["kv_lora_rank"] * N * (c["qk_nope_head_dim"] + c["v_head_dim"])
           + N * c["v_head_dim"] * D)
    dense = 3 * D * c["intermediate_size"]
    moe = (D * c["n_routed_experts"] + (c["num_experts_per_tok"] + c["n_shared_experts"])
           * 3 * D * c["moe_intermediate_size"])
    k = c["first_k_dense_replace"]
    head = D * c["vocab_size"]
    params = L * mla + k * dense + (L - k) * moe + head
    layers = L
    if mtp:
        params += mla + moe + 2 * D * D + head
        layers += 1
    pairs = seq_len / 2 if convention == "causal" else seq_len
    attention = 3 * layers * 2 * N * (h_qk + c["v_head_dim"]) * pairs
    return {"active_matmul_params": params, "weights": 6 * params, "attention": attention,
            "total": 6 * params + attention}


PUBLISHED_MOE_RUNS: tuple[dict, ...] = (
    {"key": "maxtext_mixtral_8x7b_v5p256", "framework": "MaxText", "model": "mixtral_8x7b",
     "hardware": "tpu_v5p", "chips": 256, "seq_len": 4096, "precision": "bf16",
     "tokens_per_s_per_chip": 2909, "tflops_per_chip": None, "mtp": False,
     "source": "MaxText's published MoE results (Mixtral 8x7B, v5p-256, dropless)",
     "notes": "tokens/s only: our MFU from it is the figure; sequence 4096 assumed."},
    {"key": "maxtext_deepseek_v3_v5p512", "framework": "MaxText", "model": "deepseek_v3",
     "hardware": "tpu_v5p", "chips": 512, "seq_len": 8192, "precision": "bf16",
     "tokens_per_s_per_chip": 542, "tflops_per_chip": 152.4, "mtp": False,
     "source": "MaxText's published MoE results (DeepSeek-V3, v5p-512, sequence 8k)",
     "notes": "FLOPs per token stated implicitly: TFLOP/s over tokens/s."},
    {"key": "megatron_bridge_deepseek_v3_1024xh100", "framework": "Megatron-Bridge",
     "model": "deepseek_v3", "hardware": "h100", "chips": 1024, "seq_len": 4096,
     "precision": "fp8", "tokens_per_s_per_chip": 1297, "tflops_per_chip": 338.0, "mtp": True,
     "source": "Megatron-Bridge performance summary (DeepSeek-V3, 1,024 H100, fp8, dropless)",
     "notes": "Megatron's FLOP formula counts the MTP module; sequence 4096."},
)


def flops_per_token(model: str, seq_len: int, convention: str, mtp: bool = False) -> float:
    """Training model FLOPs per token of a preset or 'deepseek_v3'."""
    if model == "deepseek_v3":
        return deepseek_v3_flops_per_token(seq_len, convention, mtp=mtp)["total"]
    return moe_flops_per_token(model, seq_len, mode="train", convention=convention)["total"]


def reproduce(run: dict) -> dict:
    """A run's figures recomputed from the FLOP model.

    Returns:
      dict: flops_per_token {conv} (ours), implied_flops_per_token (TFLOP/s / tokens/s, None when
      no TFLOP/s is published), ratio {conv} (ours / implied), agrees_with (the convention whose
      ratio is nearest 1), mfu {conv} (tokens/s x our FLOPs/token / the chip's bf16 peak), peak.
    """
    peak = peak_flops("bfloat16", get_chip(run["hardware"]))[0]
    fpt = {c: flops_per_token(run["model"], run["seq_len"], c, run["mtp"]) for c in CONVENTIONS}
    tok, tf = run["tokens_per_s_per_chip"], run["tflops_per_chip"]
    implied = tf * 1e12 / tok if tf else None
    ratio = {c: (fpt[c] / implied if implied else None) for c in CONVENTIONS}
    agrees = min(CONVENTIONS, key=lambda c: abs(ratio[c] - 1)) if implied else None
    return {"key": run["key"], "flops_per_token": fpt, "implied_flops_per_token": implied,
            "ratio": ratio, "agrees_with": agrees,
            "mfu": {c: tok * fpt[c] / peak for c in CONVENTIONS}, "peak": peak}
