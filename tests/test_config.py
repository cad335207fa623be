"""ModelConfig: presets, the seed's dict format, and a clear ValueError for every bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from vishwamai.config import (HF_CONFIG_PARAMS, PRESETS, PUBLISHED_PARAMS, ModelConfig, get_preset,
                              hf_config, seed_configs)
from vishwamai.model import VishwamAI
from vishwamai.transformer import (EnhancedTransformerModel, TransformerModel,
                                   create_vishwamai_transformer)

TINY = PRESETS["tiny"].to_dict()


def _tiny(**changes):
    d = dict(TINY)
    d.update(changes)
    return d


# (description, callable, substring the message must contain)
BAD_INPUTS = [
    ("zero layers", lambda: ModelConfig(**_tiny(num_layers=0)), "num_layers"),
    ("negative vocab", lambda: ModelConfig(**_tiny(vocab_size=-5)), "vocab_size"),
    ("float hidden_dim", lambda: ModelConfig(**_tiny(hidden_dim=64.0)), "hidden_dim"),
    ("bool head_dim", lambda: ModelConfig(**_tiny(head_dim=True)), "head_dim"),
    ("zero mlp_dim", lambda: ModelConfig(**_tiny(mlp_dim=0)), "mlp_dim"),
    ("zero max_seq_len", lambda: ModelConfig(**_tiny(max_seq_len=0)), "max_seq_len"),
    ("heads not divisible by kv heads", lambda: ModelConfig(**_tiny(num_heads=4, num_kv_heads=3)),
     "num_kv_heads=3"),
    ("odd head_dim with rope", lambda: ModelConfig(**_tiny(head_dim=15)), "head_dim=15"),
    ("unknown dtype", lambda: ModelConfig(**_tiny(dtype="float8")), "dtype='float8'"),
    ("unknown param_dtype", lambda: ModelConfig(**_tiny(param_dtype="int8")), "param_dtype"),
    ("unknown activation", lambda: ModelConfig(**_tiny(mlp_activation="tanh")), "mlp_activation"),
    ("unknown norm", lambda: ModelConfig(**_tiny(norm="batchnorm")), "norm='batchnorm'"),
    ("unknown position", lambda: ModelConfig(**_tiny(position="alibi")), "position"),
    ("unknown attention impl", lambda: ModelConfig(**_tiny(attention_impl="sdpa")), "attention_impl"),
    ("unknown remat", lambda: ModelConfig(**_tiny(remat="some")), "remat"),
    ("unknown fp8 scaling", lambda: ModelConfig(**_tiny(fp8_scaling="col")), "fp8_scaling"),
    ("dropout 1.0", lambda: ModelConfig(**_tiny(dropout_rate=1.0)), "dropout_rate"),
    ("negative eps", lambda: ModelConfig(**_tiny(norm_eps=-1e-6)), "norm_eps"),
    ("string bool", lambda: ModelConfig(**_tiny(use_bias="yes")), "use_bias"),
    ("unknown key", lambda: ModelConfig.from_dict(_tiny(n_layer=3)), "n_layer"),
    ("missing key", lambda: ModelConfig.from_dict({"vocab_size": 10}), "missing"),
    ("seed switch not bool", lambda: ModelConfig.from_dict(_tiny(use_rotary="yes")), "use_rotary"),
    ("not a mapping", lambda: ModelConfig.from_dict([1, 2]), "dict"),
    ("conflicting alias", lambda: ModelConfig.from_dict(_tiny(hidden_size=128)), "hidden_size"),
    ("unknown preset", lambda: get_preset("gpt5"), "gpt5"),
    ("replace unknown field", lambda: PRESETS["tiny"].replace(layers=3), "layers"),
    ("sequence longer than max_seq_len", lambda: _apply_tiny(jnp.zeros((1, 257), jnp.int32)),
     "max_seq_len=256"),
    ("float tokens", lambda: _apply_tiny(jnp.zeros((1, 8), jnp.float32)), "integer"),
    ("rank-1 tokens", lambda: _apply_tiny(jnp.zeros((8,), jnp.int32)), "[B, T]"),
    ("empty sequence", lambda: _apply_tiny(jnp.zeros((1, 0), jnp.int32)), "T=0"),
    ("generate past max_seq_len", lambda: _generate(max_new_tokens=300), "max_seq_len"),
    ("negative temperature", lambda: _generate(temperature=-1.0), "temperature"),
    ("top_k zero", lambda: _generate(top_k=0, temperature=1.0), "top_k"),
    ("top_p zero", lambda: _generate(top_p=0.0, temperature=1.0), "top_p"),
    ("sampling without rng", lambda: _generate(temperature=0.7), "rng"),
    ("zero new tokens", lambda: _generate(max_new_tokens=0), "max_new_tokens"),
    ("attention_mask shape", lambda: _generate(attention_mask=jnp.ones((1, 3))), "attention_mask"),
    ("attention_mask values", lambda: _generate(attention_mask=jnp.full((1, 4), 2)),
     "attention_mask"),
    ("right padding", lambda: _generate(attention_mask=jnp.array([[1, 1, 0, 0]])), "left-padded"),
    ("empty prompt row", lambda: _generate(attention_mask=jnp.zeros((1, 4))), "no token"),
    ("prompt_lengths range", lambda: _generate(prompt_lengths=[5]), "prompt_lengths"),
    ("mask and lengths", lambda: _generate(attention_mask=jnp.ones((1, 4)), prompt_lengths=[4]),
     "not both"),
    ("eos_id out of range", lambda: _generate(eos_id=256), "eos_id"),
    ("pad_id negative", lambda: _generate(pad_id=-1), "pad_id"),
    ("enhanced model with layernorm",
     lambda: _init(EnhancedTransformerModel(PRESETS["gpt2"])), "EnhancedTransformerModel"),
]

_TINY_MODEL = VishwamAI(PRESETS["tiny"].replace(attention_impl="reference"))


def _apply_tiny(tokens):
    return jax.eval_shape(_TINY_MODEL.module.init, jax.random.PRNGKey(0), tokens)


def _init(module):
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def _generate(max_new_tokens=4, **kw):
    params = _TINY_MODEL.abstract_params()
    return _TINY_MODEL.generate(params, jnp.zeros((1, 4), jnp.int32), max_new_tokens, **kw)


def test_bad_input_table_is_large():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("desc,fn,needle", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_value_error(desc, fn, needle):
    with pytest.raises(ValueError) as exc:
        fn()
    assert needle in str(exc.value), f"{desc}: message {exc.value!s} does not name {needle!r}"


def test_config_is_frozen_and_hashable():
    cfg = PRESETS["tiny"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 3
    assert hash(cfg) == hash(cfg.replace())
    assert cfg.num_kv_heads == 2 and PRESETS["base"].num_kv_heads == PRESETS["base"].num_heads


def test_from_dict_reads_the_seed_configs():
    for name, d in seed_configs().items():
        cfg = ModelConfig.from_dict(d)
        preset = PRESETS[name]
        for f in ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim", "mlp_dim",
                  "max_seq_len", "dropout_rate", "dtype", "norm", "position", "attention_impl"):
            assert getattr(cfg, f) == getattr(preset, f), (name, f)
    assert isinstance(create_vishwamai_transformer(seed_configs()["base"]), EnhancedTransformerModel)


def test_seed_switches_map_onto_fields():
    d = dict(seed_configs()["base"], use_enhanced=False, use_rotary=False, use_rms_norm=False,
             use_flash_attn=False)
    cfg = ModelConfig.from_dict(d)
    assert (cfg.norm, cfg.position, cfg.attention_impl) == ("layernorm", "learned", "reference")
    assert type(create_vishwamai_transformer(d)) is TransformerModel
    # Individual switches override the family that use_enhanced picks.
    cfg = ModelConfig.from_dict(dict(seed_configs()["base"], use_rotary=False))
    assert (cfg.norm, cfg.position) == ("rmsnorm", "learned")


def test_seed_runtime_key_and_hf_aliases():
    d = dict(seed_configs()["base"], batch_size=8)  # the seed's analyze_performance adds it
    assert ModelConfig.from_dict(d) == ModelConfig.from_dict(seed_configs()["base"])
    hf = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
          "max_position_embeddings": 128}
    # Size keys alone leave the family (norm, MLP, biases, positions) open: refused, not guessed.
    with pytest.raises(ValueError, match="from_hf"):
        ModelConfig.from_dict(hf)
    # With its model_type the same dict is a Hugging Face config, read by from_hf.
    cfg = ModelConfig.from_dict(dict(hf, model_type="llama"))
    assert cfg == ModelConfig.from_hf(dict(hf, model_type="llama"))
    assert (cfg.hidden_dim, cfg.num_layers, cfg.num_kv_heads, cfg.mlp_dim) == (32, 2, 2, 64)
    assert (cfg.mlp_activation, cfg.norm, cfg.tie_embeddings) == ("swiglu", "rmsnorm", False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parameter_tree(name):
    """Counted from the real parameter tree (`jax.eval_shape`: nothing is allocated)."""
    cfg = PRESETS[name]
    n = VishwamAI(cfg.replace(attention_impl="reference")).num_params()
    D, L, V = cfg.hidden_dim, cfg.num_layers, cfg.vocab_size
    # Lower bound: the embedding plus the q and o projections of every layer.
    assert n > V * D + L * 2 * D * cfg.q_dim
    if name in PUBLISHED_PARAMS:
        assert n == PUBLISHED_PARAMS[name]


def test_published_counts_cover_the_public_presets():
    assert set(PUBLISHED_PARAMS) == {"gpt2", "llama2_7b", "llama3_8b", "llama3_70b",
                                     "llama3_1_405b", "tinyllama_1_1b"}
    assert PUBLISHED_PARAMS == {"gpt2": 124_439_808, "llama2_7b": 6_738_415_616,
                                "llama3_8b": 8_030_261_248, "llama3_70b": 70_553_706_496,
                                "llama3_1_405b": 405_853_388_800,
                                "tinyllama_1_1b": 1_100_048_384}


# ---------------------------------------------------------------- Hugging Face configs
def _llama_hf(**changes):
    d = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100,
         "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}
    d.update(changes)
    return d


HF_REFUSALS = [
    ("unsupported model_type", _llama_hf(model_type="gemma", architectures=None), "model_type"),
    ("unsupported head", _llama_hf(architectures=["LlamaForSequenceClassification"]),
     "architectures"),
    ("mistral sliding window", dict(hf_config("mistral_7b_v0_1")), "sliding_window=4096"),
    ("qwen2 sliding layers", dict(hf_config("qwen2_5_7b"), use_sliding_window=True,
                                  sliding_window=4096, max_window_layers=2), "sliding_window"),
    ("yarn rope", _llama_hf(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type"),
    ("dynamic rope", _llama_hf(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_type"),
    ("partial rotary", _llama_hf(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("attention bias without mlp bias", _llama_hf(attention_bias=True), "attention_bias"),
    ("gelu in a gated mlp", _llama_hf(hidden_act="gelu"), "hidden_act"),
    ("gpt2 layer-scaled attention", dict(hf_config("gpt2"), scale_attn_by_inverse_layer_idx=True),
     "scale_attn_by_inverse_layer_idx"),
    ("gpt2 unknown activation", dict(hf_config("gpt2"), activation_function="swish"),
     "activation_function"),
    ("gpt2 max_seq_len override", (hf_config("gpt2"), 512), "n_positions"),
    ("missing size", {k: v for k, v in _llama_hf().items() if k != "hidden_size"}, "hidden_size"),
    ("not a config", 3.5, "config must be"),
    ("no config.json", "/nonexistent/dir", "config.json"),
]


@pytest.mark.parametrize("desc,d,needle", HF_REFUSALS, ids=[r[0] for r in HF_REFUSALS])
def test_from_hf_refuses_what_it_cannot_compute(desc, d, needle):
    d, max_seq_len = d if isinstance(d, tuple) else (d, None)
    with pytest.raises(ValueError) as exc:
        ModelConfig.from_hf(d, max_seq_len=max_seq_len)
    assert needle in str(exc.value), f"{desc}: {exc.value}"


def test_from_hf_maps_every_field_and_ignores_harmless_keys():
    d = _llama_hf(rms_norm_eps=1e-6, rope_theta=5e5, tie_word_embeddings=True, head_dim=16,
                  torch_dtype="bfloat16", bos_token_id=1, initializer_range=0.02, use_cache=True,
                  attention_dropout=0.1, pretraining_tp=2, transformers_version="4.43.0",
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    cfg = ModelConfig.from_hf(d)
    assert (cfg.vocab_size, cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.mlp_dim, cfg.max_seq_len) == (100, 32, 2, 4, 2, 16, 64, 128)
    assert (cfg.norm_eps, cfg.rope_theta, cfg.tie_embeddings, cfg.param_dtype) == (
        1e-6, 5e5, True, "bfloat16")
    assert (cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_original_max_len) == (
        "llama3", 8.0, 64)
    assert (cfg.mlp_activation, cfg.norm, cfg.position, cfg.use_bias, cfg.qkv_bias) == (
        "swiglu", "rmsnorm", "rope", False, False)
    # transformers 5 writes rope_parameters (theta inside) instead of rope_theta/rope_scaling.
    v5 = {k: v for k, v in d.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = dict(d["rope_scaling"], rope_theta=5e5)
    assert ModelConfig.from_hf(v5) == cfg
    assert ModelConfig.from_hf(_llama_hf(attention_bias=True, mlp_bias=True)).use_bias
    gpt2 = ModelConfig.from_hf(dict(hf_config("gpt2"), activation_function="gelu"))
    assert gpt2.mlp_activation == "gelu_exact"
    qwen = ModelConfig.from_hf(hf_config("qwen2_5_7b"))
    assert (qwen.qkv_bias, qwen.use_bias, qwen.norm_eps, qwen.rope_theta) == (True, False, 1e-6, 1e6)
    # Mistral's 4096-token window is exact full attention within 4096 tokens.
    assert ModelConfig.from_hf(hf_config("mistral_7b_v0_1"), max_seq_len=4096).max_seq_len == 4096


def test_hf_configs_of_the_public_presets_equal_the_presets():
    arch = ("vocab_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_dim",
            "mlp_dim", "max_seq_len", "mlp_activation", "norm", "norm_eps", "position",
            "rope_theta", "tie_embeddings", "use_bias")
    for hf_name, preset in (("gpt2", "gpt2"), ("llama2_7b", "llama2_7b"),
                            ("tinyllama_1_1b", "tinyllama_1_1b"), ("llama3_70b", "llama3_70b"),
                            ("llama3_1_405b", "llama3_1_405b")):
        cfg = ModelConfig.from_hf(hf_config(hf_name))
        assert [getattr(cfg, f) for f in arch] == [getattr(PRESETS[preset], f) for f in arch]


# The shipped configs that are no preset; the others equal a preset (test above), whose tree
# test_every_preset_parameter_tree counts.
@pytest.mark.parametrize("name", ["llama3_1_8b", "mistral_7b_v0_1", "qwen2_5_7b"])
def test_shipped_hf_configs_have_their_published_counts(name):
    """Counted from the real parameter tree (`jax.eval_shape`); tests/test_hf.py checks the
    published figures against transformers' own models of these configs."""
    cfg = ModelConfig.from_hf(hf_config(name), max_seq_len=4096 if "mistral" in name else None)
    assert VishwamAI(cfg).num_params() == HF_CONFIG_PARAMS[name]


@pytest.mark.parametrize("name", sorted(HF_CONFIG_PARAMS))
def test_to_hf_is_the_reverse_of_from_hf(name):
    raw = hf_config(name)
    cfg = ModelConfig.from_hf(raw, max_seq_len=4096 if "mistral" in name else None)
    assert ModelConfig.from_hf(cfg.to_hf(raw["model_type"])) == cfg
    assert PUBLISHED_PARAMS.get(name, HF_CONFIG_PARAMS[name]) == HF_CONFIG_PARAMS[name]


def test_to_hf_refuses_what_the_family_cannot_express():
    with pytest.raises(ValueError, match="mlp_activation"):
        PRESETS["base"].to_hf()  # the seed's 2-matrix GELU MLP with RoPE: no such HF family
    with pytest.raises(ValueError, match="use_bias"):
        PRESETS["gpt2"].replace(use_bias=False).to_hf()
    with pytest.raises(ValueError, match="model_type"):
        PRESETS["tiny"].to_hf("gemma")
