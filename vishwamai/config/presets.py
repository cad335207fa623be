"""The named presets (`PRESETS`: the seed's four sizes, a CPU `tiny`/`small` pair and public
models whose parameter counts equal the published ones), the shipped Hugging Face configs, and
the one door every caller goes through: `as_config` (a config, a preset name or a dict ->
`ModelConfig`) and `resolve_preset`.
"""
from __future__ import annotations

from typing import Any, Mapping

from vishwamai import validate
from vishwamai.config.base import ModelConfig


def _seed(name, **dims) -> ModelConfig:
    """The seed's presets: its dimensions, the architecture its parameter formula describes
    (pre-norm, 2-matrix GELU MLP, tied embedding, no biases), and its enhanced switches."""
    return ModelConfig(vocab_size=32000, max_seq_len=2048, mlp_activation="gelu",
                       norm="rmsnorm", position="rope", tie_embeddings=True, use_bias=False,
                       dropout_rate=0.1, dtype="bfloat16", attention_impl="flash",
                       name=name, **dims)


def _llama(name, **dims) -> ModelConfig:
    dims.setdefault("norm_eps", 1e-5)
    return ModelConfig(mlp_activation="swiglu", norm="rmsnorm", position="rope",
                       tie_embeddings=False, use_bias=False, name=name, **dims)


PRESETS: dict[str, ModelConfig] = {
    # Runs a forward pass on a laptop CPU in milliseconds; byte-level vocabulary.
    "tiny": ModelConfig(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                        hidden_dim=64, mlp_dim=172, max_seq_len=256, mlp_activation="swiglu",
                        norm="rmsnorm", position="rope", tie_embeddings=False, name="tiny"),
    # The CPU benchmark model.
    "small": ModelConfig(vocab_size=32000, num_layers=8, num_heads=8, head_dim=64, hidden_dim=512,
                         mlp_dim=1408, max_seq_len=2048, mlp_activation="swiglu", norm="rmsnorm",
                         position="rope", tie_embeddings=False, name="small"),
    "base": _seed("base", num_layers=12, num_heads=12, head_dim=64, hidden_dim=768, mlp_dim=3072),
    "large": _seed("large", num_layers=24, num_heads=16, head_dim=96, hidden_dim=1536,
                   mlp_dim=6144),
    "xl": _seed("xl", num_layers=32, num_heads=24, head_dim=128, hidden_dim=2048, mlp_dim=8192),
    "xxl": _seed("xxl", num_layers=40, num_heads=32, head_dim=128, hidden_dim=4096,
                 mlp_dim=16384),
    # GPT-2 small (Radford et al. 2019; HF `gpt2`): 124,439,808 parameters.
    "gpt2": ModelConfig(vocab_size=50257, num_layers=12, num_heads=12, head_dim=64,
                        hidden_dim=768, mlp_dim=3072, max_seq_len=1024, mlp_activation="gelu",
                        norm="layernorm", position="learned", tie_embeddings=True,
                        use_bias=True, name="gpt2"),
    # Llama-2-7B (Touvron et al. 2023; HF `meta-llama/Llama-2-7b-hf`): 6,738,415,616.
    "llama2_7b": _llama("llama2_7b", vocab_size=32000, num_layers=32, num_heads=32,
                        head_dim=128, hidden_dim=4096, mlp_dim=11008, max_seq_len=4096),
    # Llama-3-8B (Meta 2024; HF `meta-llama/Meta-Llama-3-8B`): 8,030,261,248.
    "llama3_8b": _llama("llama3_8b", vocab_size=128256, num_layers=32, num_heads=32,
                        num_kv_heads=8, head_dim=128, hidden_dim=4096, mlp_dim=14336,
                        max_seq_len=8192, rope_theta=500_000.0),
    # Llama-3-70B (Meta 2024; HF `meta-llama/Meta-Llama-3-70B`): 70,553,706,496.
    "llama3_70b": _llama("llama3_70b", vocab_size=128256, num_layers=80, num_heads=64,
                         num_kv_heads=8, head_dim=128, hidden_dim=8192, mlp_dim=28672,
                         max_seq_len=8192, rope_theta=500_000.0),
    # Llama-3.1-405B (Meta 2024; HF `meta-llama/Llama-3.1-405B`): 405,853,388,800. Context
    # 131,072 with the llama3 RoPE scaling of its config.json (`hf_config('llama3_1_405b')`).
    "llama3_1_405b": ModelConfig.from_hf(
        {"model_type": "llama", "vocab_size": 128256, "num_hidden_layers": 126,
         "num_attention_heads": 128, "num_key_value_heads": 8, "hidden_size": 16384,
         "intermediate_size": 53248, "max_position_embeddings": 131072,
         "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
         "tie_word_embeddings": False,
         "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    ).replace(name="llama3_1_405b"),
    # TinyLlama-1.1B (Zhang et al. 2024; HF `TinyLlama/TinyLlama-1.1B-...`): 1,100,048,384.
    "tinyllama_1_1b": _llama("tinyllama_1_1b", vocab_size=32000, num_layers=22, num_heads=32,
                             num_kv_heads=4, head_dim=64, hidden_dim=2048, mlp_dim=5632,
                             max_seq_len=2048),
    # Mixture of experts on a laptop CPU: 8 experts, top-2, the auxiliary losses on.
    "tiny_moe": ModelConfig(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=16, hidden_dim=64, mlp_dim=64, max_seq_len=256,
                            mlp_activation="swiglu", norm="rmsnorm", position="rope",
                            tie_embeddings=False, num_experts=8, num_experts_per_tok=2,
                            router_aux_loss_coef=0.01,
                            router_z_loss_coef=0.001, name="tiny_moe"),
    # Mixtral-8x7B (Jiang et al. 2024; HF `mistralai/Mixtral-8x7B-v0.1`): 46,702,792,704.
    "mixtral_8x7b": _llama("mixtral_8x7b", vocab_size=32000, num_layers=32, num_heads=32,
                           num_kv_heads=8, head_dim=128, hidden_dim=4096, mlp_dim=14336,
                           max_seq_len=32768, rope_theta=1e6, num_experts=8,
                           num_experts_per_tok=2, router_aux_loss_coef=0.02),
    # Qwen3-30B-A3B (Qwen team 2025; HF `Qwen/Qwen3-30B-A3B`): 30,532,122,624.
    "qwen3_30b_a3b": _llama("qwen3_30b_a3b", vocab_size=151936, num_layers=48, num_heads=32,
                            num_kv_heads=4, head_dim=128, hidden_dim=2048, mlp_dim=6144,
                            max_seq_len=40960, rope_theta=1e6, norm_eps=1e-6, qk_norm="head",
                            num_experts=128, num_experts_per_tok=8, moe_mlp_dim=768,
                            router_aux_loss_coef=0.001),
    # OLMoE-1B-7B (Muennighoff et al. 2024; HF `allenai/OLMoE-1B-7B-0924`): 6,919,161,856.
    "olmoe_1b_7b": _llama("olmoe_1b_7b", vocab_size=50304, num_layers=16, num_heads=16,
                          head_dim=128, hidden_dim=2048, mlp_dim=1024, max_seq_len=4096,
                          qk_norm="full", num_experts=64, num_experts_per_tok=8,
                          norm_topk_prob=False, router_aux_loss_coef=0.01,
                          router_z_loss_coef=0.001),
}

# Parameter counts as published (model cards / the papers' reference implementations).
PUBLISHED_PARAMS = {
    "mixtral_8x7b": 46_702_792_704,
    "qwen3_30b_a3b": 30_532_122_624,
    "olmoe_1b_7b": 6_919_161_856,
    "gpt2": 124_439_808,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "llama3_70b": 70_553_706_496,
    "llama3_1_405b": 405_853_388_800,
    "tinyllama_1_1b": 1_100_048_384,
}

SEED_PRESETS = ("base", "large", "xl", "xxl")

# The presets with a dense MLP in every block (chapters 1 and 2 tabulate these; the mixture-of-
# experts presets have a chapter of their own).
DENSE_PRESETS: dict[str, ModelConfig] = {n: c for n, c in PRESETS.items() if not c.num_experts}

# Public Hugging Face config.json files shipped in vishwamai/data/hf_configs, and the parameter
# counts their model cards publish (the safetensors index totals: bytes / 2 for bf16 and fp16).
HF_CONFIG_PARAMS = {
    "gpt2": 124_439_808,
    "llama2_7b": 6_738_415_616,
    "llama3_1_8b": 8_030_261_248,
    "llama3_70b": 70_553_706_496,
    "llama3_1_405b": 405_853_388_800,
    "mistral_7b_v0_1": 7_241_732_096,
    "qwen2_5_7b": 7_615_616_512,
    "tinyllama_1_1b": 1_100_048_384,
    "mixtral_8x7b": 46_702_792_704,
    "qwen3_30b_a3b": 30_532_122_624,
    "olmoe_1b_7b_0924": 6_919_161_856,
    "qwen1_5_moe_a2_7b": 14_315_784_192,
}


def hf_config(name: str) -> dict:
    """The shipped Hugging Face `config.json` called `name` (see `HF_CONFIG_PARAMS`), as a dict."""
    import json
    from importlib import resources

    if name not in HF_CONFIG_PARAMS:
        raise ValueError(f"unknown shipped Hugging Face config {name!r}; accepted: "
                         f"{sorted(HF_CONFIG_PARAMS)}")
    path = resources.files("vishwamai").joinpath("data", "hf_configs", f"{name}.json")
    return json.loads(path.read_text())


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; `ValueError` listing the names otherwise."""
    if name not in PRESETS:
        raise validate.InputError(f"preset={name!r} is not accepted: expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def seed_configs() -> dict[str, dict]:
    """The seed notebook's `create_model_configs()`, verbatim: four dicts in its key format."""
    dims = {
        "base": dict(vocab_size=32000, num_layers=12, num_heads=12, head_dim=64,
                     hidden_dim=768, mlp_dim=3072, max_seq_len=2048),
        "large": dict(vocab_size=32000, num_layers=24, num_heads=16, head_dim=96,
                      hidden_dim=1536, mlp_dim=6144, max_seq_len=2048),
        "xl": dict(vocab_size=32000, num_layers=32, num_heads=24, head_dim=128,
                   hidden_dim=2048, mlp_dim=8192, max_seq_len=2048),
        "xxl": dict(vocab_size=32000, num_layers=40, num_heads=32, head_dim=128,
                    hidden_dim=4096, mlp_dim=16384, max_seq_len=2048),
    }
    for c in dims.values():
        c.update(dropout_rate=0.1, use_enhanced=True, use_rotary=True, use_flash_attn=True,
                 use_rms_norm=True, dtype="bfloat16")
    return dims


def as_config(config: "ModelConfig | Mapping[str, Any] | str") -> ModelConfig:
    """Anything that names a model -> its `ModelConfig`: the config itself, a preset name, or a
    dict (this class's fields or the seed's keys, see `ModelConfig.from_dict`).

    The one resolver every entry point uses; errors name the accepted forms.
    """
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, (ModelConfig, Mapping)):
        return ModelConfig.from_dict(config)
    raise validate.InputTypeError(f"config must be a ModelConfig, a preset name or a dict; got "
                           f"{type(config).__name__}")


def resolve_preset(name: str = "auto", *, cpu: str = "tiny", accelerator: str = "base") -> str:
    """`'auto'` -> a preset sized for the backend JAX runs on (`cpu` on CPU, else `accelerator`).

    Any other name is checked and returned, so a chapter's `preset` parameter accepts both.
    """
    if name == "auto":
        import jax

        return cpu if jax.default_backend() == "cpu" else accelerator
    get_preset(name)
    return name
