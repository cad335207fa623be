"""ModelConfig: presets, the seed's dict format, and a clear ValueError for every bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from vishwamai.config import PRESETS, PUBLISHED_PARAMS, ModelConfig, get_preset, seed_configs
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
    ("top_k too large", lambda: _generate(top_k=1000, temperature=1.0), "top_k"),
    ("top_p zero", lambda: _generate(top_p=0.0, temperature=1.0), "top_p"),
    ("sampling without rng", lambda: _generate(temperature=0.7), "rng"),
    ("zero new tokens", lambda: _generate(max_new_tokens=0), "max_new_tokens"),
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
    assert set(PUBLISHED_PARAMS) == {"gpt2", "llama2_7b", "llama3_8b", "tinyllama_1_1b"}
    assert PUBLISHED_PARAMS == {"gpt2": 124_439_808, "llama2_7b": 6_738_415_616,
                                "llama3_8b": 8_030_261_248, "tinyllama_1_1b": 1_100_048_384}
