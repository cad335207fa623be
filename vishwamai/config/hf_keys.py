"""The key tables of the two foreign config formats and their readers: the seed's dictionary keys
(`SEED_KEYS`), and Hugging Face's `config.json` (model types, architectures, per-family
defaults, activation names, RoPE scaling and sliding-window rules). `_hf_fields` turns a
Hugging Face dict into `ModelConfig` fields, refusing by name what cannot be computed, and
`_to_hf` writes a config back in that format.
"""
from __future__ import annotations

from typing import Mapping

from vishwamai import validate
from vishwamai.config.base import DTYPES, ModelConfig


SEED_KEYS = ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim", "mlp_dim",
             "max_seq_len", "dropout_rate", "use_enhanced", "use_rotary", "use_flash_attn",
             "use_rms_norm", "dtype")
# Hugging Face size keys: in a dict without model_type they are an error, not an alias.
HF_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "n_embd", "n_layer", "n_head",
                "n_positions", "n_inner")
_IGNORED_KEYS = ("batch_size",)

# ---------------------------------------------------------------------- Hugging Face configs
HF_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
HF_ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2", "GPT2Model": "gpt2",
    "LlamaForCausalLM": "llama", "LlamaModel": "llama",
    "MistralForCausalLM": "mistral", "MistralModel": "mistral",
    "Qwen2ForCausalLM": "qwen2", "Qwen2Model": "qwen2",
}
_CAUSAL_LM = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
              "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers' defaults for keys a config.json may leave out.
_HF_DEFAULTS = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "tie_word_embeddings": True},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "sliding_window": 4096},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
              "max_window_layers": 28},
}
# GPT-2's activation_function -> mlp_activation; a gated family's hidden_act -> mlp_activation.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                     "relu": "relu"}
_GATED_ACTIVATIONS = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}


def _read_hf_config(config) -> dict:
    import json
    import os

    if hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"no Hugging Face config.json at config={os.fspath(config)!r}")
        with open(path) as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise ValueError("config must be a dict, a path to config.json (or its directory), or a "
                         f"PretrainedConfig; got {type(config).__name__}")
    return dict(config)


def _hf_int(d, key) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"Hugging Face config key {key!r} must be a positive int; got {v!r}")
    return v


def _hf_model_type(d) -> str:
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if model_type is None and archs:
        model_type = HF_ARCHITECTURES.get(archs[0])
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"Hugging Face model_type={d.get('model_type')!r} (architectures="
                         f"{list(archs)}) is not supported; accepted model_type: {HF_MODEL_TYPES}")
    bad = [a for a in archs if HF_ARCHITECTURES.get(a) != model_type]
    if bad:
        accepted = sorted(a for a, t in HF_ARCHITECTURES.items() if t == model_type)
        raise ValueError(f"Hugging Face architectures={bad} is not supported for "
                         f"model_type={model_type!r}; accepted: {accepted}")
    return model_type


def _hf_refuse(key, value, why):
    raise ValueError(f"Hugging Face config key {key}={value!r} is not supported: {why}")


def _hf_rope(d) -> dict:
    """RoPE theta and scaling fields from either `rope_theta` + `rope_scaling` (transformers 4)
    or `rope_parameters` (transformers 5)."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        _hf_refuse("rope_scaling", params, "expected a dict or null")
    if params and all(isinstance(v, Mapping) for v in params.values()):
        _hf_refuse("rope_parameters", params, "one RoPE per layer type is not implemented")
    theta = params.get("rope_theta", d.get("rope_theta", 10_000.0))
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        _hf_refuse("partial_rotary_factor", partial, "RoPE is applied to the whole head")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    out = {"rope_theta": float(theta)}
    if kind == "default":
        return out
    if kind not in ("linear", "llama3"):
        _hf_refuse("rope_type", kind, "accepted: ('default', 'linear', 'llama3')")
    out.update(rope_scaling=kind, rope_scaling_factor=float(params["factor"]))
    if kind == "llama3":
        original = params.get("original_max_position_embeddings",
                              d.get("original_max_position_embeddings",
                                    d.get("max_position_embeddings")))
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_len=int(original))
    return out


def _hf_window(window, max_len):
    """Refuses sliding-window attention unless the window covers every usable position."""
    if window is None or window >= max_len:
        return
    _hf_refuse("sliding_window", window,
               f"sliding-window attention is not implemented and the window is shorter than "
               f"max_seq_len={max_len}; pass max_seq_len <= {window} to from_hf to use the model "
               f"within its window, where full causal attention computes the same function")


_HF_REQUIRED = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
    "llama": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size"),
}


def _hf_fields(d, max_seq_len=None) -> dict:
    model_type = _hf_model_type(d)
    required = _HF_REQUIRED["gpt2" if model_type == "gpt2" else "llama"]
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ValueError(f"Hugging Face {model_type} config is missing required keys {missing}")
    d = {**_HF_DEFAULTS[model_type], **{k: v for k, v in d.items() if v is not None
                                        or k in ("n_inner", "num_key_value_heads",
                                                 "sliding_window", "head_dim")}}
    dtype = d.get("dtype") or d.get("torch_dtype")
    dtype = dtype if dtype in DTYPES else "float32"
    out = {"dtype": dtype, "param_dtype": dtype, "dropout_rate": 0.0, "name": model_type,
           "tie_embeddings": d["tie_word_embeddings"]}
    if not isinstance(out["tie_embeddings"], bool):
        raise ValueError("Hugging Face config key 'tie_word_embeddings' must be a bool; got "
                         f"{out['tie_embeddings']!r}")
    if model_type == "gpt2":
        D, N = _hf_int(d, "n_embd"), _hf_int(d, "n_head")
        if D % N:
            raise ValueError(f"Hugging Face config n_embd={D} is not divisible by n_head={N}")
        act = d["activation_function"]
        if act not in _GPT2_ACTIVATIONS:
            _hf_refuse("activation_function", act, f"accepted: {tuple(_GPT2_ACTIVATIONS)}")
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
            if d.get(key, ok) != ok:
                _hf_refuse(key, d[key], f"only {key}={ok} is implemented")
        length = _hf_int(d, "n_positions")
        out.update(vocab_size=_hf_int(d, "vocab_size"), num_layers=_hf_int(d, "n_layer"),
                   num_heads=N, num_kv_heads=N, head_dim=D // N, hidden_dim=D,
                   mlp_dim=d["n_inner"] if d["n_inner"] is not None else 4 * D,
                   max_seq_len=length, mlp_activation=_GPT2_ACTIVATIONS[act], norm="layernorm",
                   norm_eps=float(d["layer_norm_epsilon"]), position="learned", use_bias=True)
        if max_seq_len is not None and max_seq_len != length:
            _hf_refuse("n_positions", length, f"the learned position table fixes max_seq_len; "
                       f"got max_seq_len={max_seq_len!r}")
        return out

    D, N = _hf_int(d, "hidden_size"), _hf_int(d, "num_attention_heads")
    L = _hf_int(d, "num_hidden_layers")
    K = d["num_key_value_heads"] if d["num_key_value_heads"] is not None else N
    H = d.get("head_dim") or D // N  # transformers: `getattr(config, "head_dim", None) or D // N`
    act = d["hidden_act"]
    if act not in _GATED_ACTIVATIONS:
        _hf_refuse("hidden_act", act, f"accepted: {tuple(_GATED_ACTIVATIONS)}")
    length = _hf_int(d, "max_position_embeddings")
    if max_seq_len is not None:
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be a positive int or None; got {max_seq_len!r}")
        length = max_seq_len
    use_bias, qkv_bias = False, model_type == "qwen2"
    if model_type == "llama":
        attn_bias, mlp_bias = d["attention_bias"], d["mlp_bias"]
        if attn_bias != mlp_bias:
            _hf_refuse("attention_bias", attn_bias,
                       f"with mlp_bias={mlp_bias!r}: biases go on all projections or on none")
        use_bias = bool(attn_bias)
    elif d.get("attention_bias") or d.get("mlp_bias"):
        key = "attention_bias" if d.get("attention_bias") else "mlp_bias"
        _hf_refuse(key, d[key], f"{model_type} has no such biases")
    layer_types = d.get("layer_types") or []
    if model_type == "mistral":
        _hf_window(d["sliding_window"], length)
    elif model_type == "qwen2":
        sliding = any(t != "full_attention" for t in layer_types) or (
            d["use_sliding_window"] and d["max_window_layers"] < L)
        if sliding:
            _hf_window(d["sliding_window"], length)
    elif any(t != "full_attention" for t in layer_types):
        _hf_refuse("layer_types", layer_types, "only full_attention layers are implemented")
    out.update(vocab_size=_hf_int(d, "vocab_size"), num_layers=L, num_heads=N, num_kv_heads=K,
               head_dim=H, hidden_dim=D, mlp_dim=_hf_int(d, "intermediate_size"),
               max_seq_len=length, mlp_activation=_GATED_ACTIVATIONS[act], norm="rmsnorm",
               norm_eps=float(d["rms_norm_eps"]), position="rope", use_bias=use_bias,
               qkv_bias=qkv_bias, **_hf_rope(d))
    return out


def _to_hf(cfg: "ModelConfig", model_type: str | None) -> dict:
    if model_type is None:
        if cfg.position == "learned" or cfg.norm == "layernorm":
            model_type = "gpt2"
        elif cfg.qkv_bias and not cfg.use_bias:
            model_type = "qwen2"
        else:
            model_type = "llama"
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not one of {HF_MODEL_TYPES}")

    def need(field, ok, accepted):
        if not ok:
            raise ValueError(f"ModelConfig.{field}={getattr(cfg, field)!r} cannot be written as "
                             f"a Hugging Face {model_type} config; it needs {accepted}")

    out = {"architectures": [_CAUSAL_LM[model_type]], "model_type": model_type,
           "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
           "torch_dtype": cfg.param_dtype}
    if model_type == "gpt2":
        act = {v: k for k, v in _GPT2_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
        need("position", cfg.position == "learned", "'learned'")
        need("norm", cfg.norm == "layernorm", "'layernorm'")
        need("use_bias", cfg.use_bias, "True")
        need("mlp_activation", cfg.mlp_activation in act, f"one of {tuple(act)}")
        need("num_kv_heads", cfg.num_kv_heads == cfg.num_heads, f"= num_heads={cfg.num_heads}")
        need("head_dim", cfg.q_dim == cfg.hidden_dim, f"num_heads * head_dim = hidden_dim")
        need("rope_scaling", cfg.rope_scaling == "none", "'none'")
        out.update(n_embd=cfg.hidden_dim, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                   n_inner=cfg.mlp_dim, n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len,
                   activation_function=act[cfg.mlp_activation],
                   layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
        return out
    hidden_act = {v: k for k, v in _GATED_ACTIVATIONS.items() if k != "gelu_new"}
    need("position", cfg.position == "rope", "'rope'")
    need("norm", cfg.norm == "rmsnorm", "'rmsnorm'")
    need("mlp_activation", cfg.mlp_activation in hidden_act, f"one of {tuple(hidden_act)}")
    if model_type == "qwen2":
        need("use_bias", not cfg.use_bias, "False (q/k/v biases only)")
        need("qkv_bias", cfg.qkv_bias, "True")
    else:
        need("qkv_bias", not cfg.qkv_bias or cfg.use_bias, "False (or use_bias=True)")
    if model_type == "mistral":
        need("use_bias", not cfg.use_bias, "False")
    out.update(hidden_size=cfg.hidden_dim, intermediate_size=cfg.mlp_dim,
               num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
               num_key_value_heads=cfg.num_kv_heads, hidden_act=hidden_act[cfg.mlp_activation],
               max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
               rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling_params,
               head_dim=cfg.head_dim)
    if model_type == "llama":
        out.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
    elif model_type == "mistral":
        out["sliding_window"] = None
    else:
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=cfg.num_layers)
    return out
