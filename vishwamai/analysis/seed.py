"""The seed notebook's analysis formulas, reproduced as written, for the errata appendix.

These are NOT the package's analysis: they are kept so the book can print the seed's numbers
next to the verified ones (`count_params`, `flops`, `memory`) and say where each went wrong.
`SEED_PRINTED` holds what the seed's notebook printed; the tests check these functions
reproduce it.
"""
from __future__ import annotations

from typing import Any, Mapping

# What the seed printed (its cell In [4]; the XXL block was cut off after "Model Size").
SEED_PRINTED = {
    "base": {"total_params": 109_529_088, "params_gb": 0.20, "activation_gb": 0.01,
             "attention_gb": 0.09, "theoretical_throughput": 1_917_299,
             "distribution": {"embedding": 22.44, "attention": 25.85, "ffn": 51.70,
                              "norm": 0.02}},
    "large": {"total_params": 728_702_976, "params_gb": 1.36, "activation_gb": 0.02,
              "attention_gb": 0.12, "theoretical_throughput": 288_183,
              "distribution": {"embedding": 6.75, "attention": 31.08, "ffn": 62.16,
                               "norm": 0.01}},
    "xl": {"total_params": 1_676_279_808, "params_gb": 3.12, "activation_gb": 0.03,
           "attention_gb": 0.19, "theoretical_throughput": 125_277,
           "distribution": {"embedding": 3.91, "attention": 32.03, "ffn": 64.06,
                            "norm": 0.01}},
    "xxl": {"total_params": 8_184_463_360, "params_gb": 15.24},
}

# The seed's markdown: "Base Model (768M parameters), Large (1.5B), XL (3B), XXL (7B)".
SEED_CLAIMED_SIZES = {"base": 768e6, "large": 1.5e9, "xl": 3e9, "xxl": 7e9}

# The seed's benchmark died allocating this many bytes (its XLA log): the f32 logits of its
# batch 32 x 512 tokens x 32000 vocabulary.
SEED_OOM_BYTES = 2_097_152_000
SEED_BENCH_BATCH, SEED_BENCH_SEQ = 32, 512
SEED_PEAK_TFLOPS = 420  # "TPU v3-8 peak TFLOPS" in the seed


def analyze_architecture(config: Mapping[str, Any]) -> dict:
    """The seed's first `analyze_architecture(config)`, formulas unchanged.

    Its errors: attention 4*h*h assumes num_heads*head_dim == hidden_dim (false for XL);
    the final norm is missing; 'theoretical_throughput' divides 420 TFLOP/s by 2*params, a
    forward-only count, though labelled forward + backward, at 100% utilisation; the
    activation and attention 'GB' are one sequence, one layer, in bf16.
    """
    def calculate_memory(params: int, dtype: str = "bfloat16") -> float:
        bytes_per_param = 2 if dtype == "bfloat16" else 4
        return (params * bytes_per_param) / (1024 ** 3)

    h, v, l, m = (config["hidden_dim"], config["vocab_size"], config["num_layers"],
                  config["mlp_dim"])
    embedding_params = v * h
    attention_params = l * (4 * h * h)
    ffn_params = l * (2 * h * m)
    norm_params = l * 2 * h
    total_params = embedding_params + attention_params + ffn_params + norm_params
    out = {
        "total_params": total_params,
        "params_gb": calculate_memory(total_params),
        "activation_gb": calculate_memory(config["max_seq_len"] * h * 4),
        "attention_gb": calculate_memory(config["max_seq_len"] ** 2 * config["num_heads"]),
        "components": {"embedding": embedding_params, "attention": attention_params,
                       "ffn": ffn_params, "norm": norm_params},
    }
    flops_per_token = total_params * 2
    out["theoretical_throughput"] = (SEED_PEAK_TFLOPS * 1e12) / flops_per_token
    return out


def distribution(analysis: Mapping[str, Any]) -> dict:
    """The seed's 'Parameter Distribution' percentages."""
    total = analysis["total_params"]
    return {k: 100 * v / total for k, v in analysis["components"].items()}


def analyze_memory_efficiency(config: Mapping[str, Any], batch_size: int = 32) -> dict:
    """The seed's first `analyze_memory_efficiency(config)` (bytes), formulas unchanged.

    Its errors: 'activation' is one [B,T,D] bf16 tensor for the whole model; 'attention' one
    layer's bf16 scores (the reference kernel keeps f32); 'flash' keeps B*N*T values "O(n)"
    (it keeps the output and per-row statistics); checkpointing is a flat /4.
    """
    seq_len, hidden_dim, num_heads = (config["max_seq_len"], config["hidden_dim"],
                                      config["num_heads"])
    activation_memory = batch_size * seq_len * hidden_dim * 2
    attention_memory = batch_size * num_heads * seq_len * seq_len * 2
    gradient_memory = activation_memory
    flash_attention_memory = batch_size * num_heads * seq_len * 2
    gradient_checkpointing_memory = activation_memory / 4
    mixed = {"compute": activation_memory, "accumulation": gradient_memory * 2}
    return {
        "baseline_memory": activation_memory + attention_memory + gradient_memory,
        "optimized_memory": flash_attention_memory + gradient_checkpointing_memory
        + mixed["compute"],
        "memory_savings": 1.0 - (flash_attention_memory + gradient_checkpointing_memory)
        / (activation_memory + attention_memory),
        "techniques": {
            "flash_attention_savings": 1.0 - flash_attention_memory / attention_memory,
            "gradient_checkpoint_savings": 1.0 - gradient_checkpointing_memory
            / activation_memory,
            "mixed_precision_ratio": mixed["compute"] / mixed["accumulation"],
        },
    }


def calculate_param_size(hidden_size: int, num_layers: int, vocab_size: int) -> dict:
    """The seed's second parameter formula (inside its redefined `analyze_memory_efficiency`).

    Its error: 'ffn' is 4*h*h, half of a 2-matrix MLP with F = 4h (2*h*4h = 8*h*h); and it was
    evaluated with vocab 50000 while the seed's models use 32000.
    """
    embedding_params = vocab_size * hidden_size
    attention_params = 4 * hidden_size * hidden_size
    ffn_params = 4 * hidden_size * hidden_size
    layer_norm_params = 4 * hidden_size
    per_layer = attention_params + ffn_params + layer_norm_params
    return {"embedding": embedding_params, "attention": attention_params * num_layers,
            "ffn": ffn_params * num_layers, "layer_norm": layer_norm_params * num_layers,
            "total": embedding_params + per_layer * num_layers}


def estimate_activation_memory_mb(batch_size: int = 32, seq_len: int = 512,
                                  hidden_size: int = 768, num_layers: int = 12) -> float:
    """The seed's `estimate_activation_memory()` (MiB, 'fp16'): 9 [B,T,D] tensors per layer,
    no attention scores, no MLP width."""
    per_layer = batch_size * seq_len * hidden_size * (4 + 4 + 1)
    return per_layer * num_layers * 2 / (1024 * 1024)


def attention_complexity(seq_len: int, hidden_size: int = 768, num_heads: int = 12,
                         ff_dim: int = 3072) -> dict:
    """The seed's `TransformerBlockAnalysis.attention_complexity` / `ffn_complexity`.

    Multiply-adds, not FLOPs (no factor 2); 'value_multiply' is one D x D projection where a
    block has four (q, k, v, out); no causal halving.
    """
    head_dim = hidden_size // num_heads
    qk = seq_len * seq_len * head_dim * num_heads
    av = seq_len * seq_len * head_dim * num_heads
    vm = seq_len * hidden_size * hidden_size
    ffn = 2 * seq_len * hidden_size * ff_dim
    return {"qk_multiply": qk, "attention_multiply": av, "value_multiply": vm,
            "attention_total": qk + av + vm, "ffn_total": ffn}


def architecture_analysis_hf_keys(config: Mapping[str, Any]) -> dict:
    """The seed's second `analyze_architecture`, which reads Hugging Face style keys.

    Called on the seed's own configs it raises `KeyError: 'hidden_size'`: they use
    'hidden_dim'. Kept verbatim (first lines) so the appendix can show the failure.
    """
    return {
        "embedding_dim": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "head_dim": config["hidden_size"] // config["num_attention_heads"],
        "feed_forward_dim": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
    }


# The names the seed used, prefixed, for chapters that import them side by side with ours.
seed_analyze_architecture = analyze_architecture
seed_analyze_memory_efficiency = analyze_memory_efficiency
seed_calculate_param_size = calculate_param_size
