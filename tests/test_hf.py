"""Hugging Face checkpoints, tested against transformers itself.

Each family is a random-initialised transformers model built from a small config here (nothing
is downloaded), with every weight drawn wide (normal, std 0.3; norm scales around 1), so that a
wrong head order, RoPE layout or gate/up swap moves the logits by O(1), far above the tolerance.
It is saved with transformers' `save_pretrained`, loaded with `VishwamAI.from_pretrained`, and
compared in f32: logits within LOGIT_TOL, greedy `generate` token for token, and the round trip
transformers -> vishwamai -> transformers bit for bit.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed to compare against transformers")
transformers = pytest.importorskip("transformers",
                                   reason="transformers is needed to compare against it")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from vishwamai import hf  # noqa: E402
from vishwamai.config import HF_CONFIG_PARAMS, ModelConfig, hf_config  # noqa: E402
from vishwamai.layers.rope import rope_inv_freq  # noqa: E402
from vishwamai.model import VishwamAI  # noqa: E402

# f32 on both sides; measured max |diff| is 1e-5..4e-5 on logits of magnitude ~10 (torch's and
# XLA's f32 matmuls sum in different orders).
LOGIT_TOL = dict(atol=2e-4, rtol=1e-5)
V, T_PROMPT, NEW = 256, 40, 8
# llama3 scaling with a pre-training context of 16: every frequency whose wavelength exceeds 16
# positions (all but the fastest pair at H=16) is divided by 8, and positions up to 47 turn those
# pairs by up to ~2 rad unscaled: an implementation that ignores or mis-bands the scaling is off
# by O(1) in the logits.
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
_SMALL = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
        eos_token_id=2, pad_token_id=0)),
    "llama2": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **_SMALL, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5)),
    "llama3": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **_SMALL, num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0,
        rope_scaling=dict(LLAMA3_SCALING))),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **_SMALL, num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=None,
        rope_theta=1e6)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **_SMALL, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
}


@functools.cache
def _jit_logits(model):
    """One compiled forward per config (VishwamAI hashes by config): the negative controls and
    the llama3 comparison share it."""
    return jax.jit(model.logits)


def _widen(model, std=0.3):
    """Every weight and bias ~ N(0, std); norm scales ~ N(1, 0.2)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def _tokens(B, T, seed=0):
    return np.random.RandomState(seed).randint(3, V, (B, T)).astype(np.int64)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(family, transformers model, its checkpoint directory, our model, our params)."""
    torch.manual_seed(0)
    ref = _widen(FAMILIES[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    model, params = VishwamAI.from_pretrained(path, attention_impl="reference")
    return request.param, ref, path, model, params


def _ref_logits(ref, x, mask=None):
    with torch.no_grad():
        # transformers' forward counts positions from 0 at column 0; its generate (and we)
        # count from each row's first token, so the forward gets those positions explicitly.
        kw = {} if mask is None else {
            "attention_mask": torch.tensor(mask),
            "position_ids": torch.tensor(np.maximum(np.cumsum(mask, axis=1) - 1, 0))}
        return ref(torch.tensor(x), **kw).logits.numpy()


def test_config_fields(pair):
    name, ref, _, model, params = pair
    cfg, rc = model.config, ref.config
    assert cfg.vocab_size == V and cfg.num_layers == 2 and cfg.dtype == "float32"
    assert cfg.tie_embeddings == rc.tie_word_embeddings
    if name == "gpt2":
        assert (cfg.norm, cfg.position, cfg.use_bias, cfg.mlp_activation) == (
            "layernorm", "learned", True, "gelu")
    else:
        assert (cfg.norm, cfg.position, cfg.mlp_activation) == ("rmsnorm", "rope", "swiglu")
        assert cfg.num_kv_heads == rc.num_key_value_heads and cfg.norm_eps == rc.rms_norm_eps
        assert (cfg.use_bias, cfg.qkv_bias) == (False, name == "qwen2")
    assert cfg.rope_scaling == ("llama3" if name == "llama3" else "none")
    # Qwen2's biases: q, k, v only.
    att = params["layer_0"]["attention"]
    assert ("bias" in att["query"]) == ("bias" in att["value"]) == (name in ("gpt2", "qwen2"))
    assert ("bias" in att["out"]) == (name == "gpt2")


def test_logits_equal_transformers(pair):
    name, ref, _, model, params = pair
    x = _tokens(2, T_PROMPT + NEW)
    ours = np.asarray(_jit_logits(model)(params, jnp.asarray(x)))
    want = _ref_logits(ref, x)
    print(f"{name}: max |logit diff| = {np.abs(ours - want).max():.2e} "
          f"(max |logit| {np.abs(want).max():.1f})")
    np.testing.assert_allclose(ours, want, **LOGIT_TOL)


def test_greedy_generate_equals_transformers(pair):
    """Greedy continuations of a left-padded batch (one full-length row, two shorter prompts),
    rows stopping at EOS and padding afterwards, token for token as transformers' `generate`."""
    _, ref, _, model, params = pair
    x = _tokens(3, T_PROMPT, seed=1)
    mask = np.ones_like(x)
    mask[0, :7] = 0
    mask[2, :25] = 0
    x = np.where(mask == 1, x, 0)
    # A likely token as EOS, so that some row stops early: the argmax after row 0's prompt.
    eos = int(np.argmax(_ref_logits(ref, x[:1, 7:])[0, -1]))
    ours = np.asarray(model.generate(params, jnp.asarray(x), NEW, attention_mask=mask,
                                     eos_id=eos, pad_id=0))
    with torch.no_grad():
        want = ref.generate(torch.tensor(x), attention_mask=torch.tensor(mask),
                            max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                            pad_token_id=0).numpy()
    want = np.pad(want, ((0, 0), (0, T_PROMPT + NEW - want.shape[1])))  # all rows stopped early
    assert (ours[0, T_PROMPT:] == [eos] + [0] * (NEW - 1)).all()
    np.testing.assert_array_equal(ours, want)


def test_round_trip_is_bit_identical(pair, tmp_path):
    """transformers' file -> our tree -> our file: the same names, dtypes and bits; transformers
    loads our file back into the same model."""
    name, ref, path, model, params = pair
    theirs = safetensors_numpy.load_file(os.path.join(path, "model.safetensors"))
    ours = model.to_hf_state_dict(params, model_type=json.load(open(path / "config.json"))["model_type"])
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    model.save_pretrained(tmp_path, params, model_type=ref.config.model_type)
    back = type(ref).from_pretrained(tmp_path).eval()
    assert back.config.tie_word_embeddings == ref.config.tie_word_embeddings
    for (k, a), (_, b) in zip(sorted(ref.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), k
    x = _tokens(1, 16, seed=3)
    np.testing.assert_array_equal(_ref_logits(back, x), _ref_logits(ref, x))


# ---------------------------------------------------------------- negative controls
def _llama3():
    torch.manual_seed(0)
    return _widen(FAMILIES["llama3"]())


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    ref = _llama3()
    path = tmp_path_factory.mktemp("llama3_neg")
    ref.save_pretrained(path)
    model, params = VishwamAI.from_pretrained(path, attention_impl="reference")
    x = _tokens(2, T_PROMPT + NEW, seed=4)  # the shape of test_logits_equal_transformers
    return model, params, x, _ref_logits(ref, x)


def _far(model, params, x, want):
    """The comparison fails, and by far: the largest |logit diff| is > 100x the tolerance."""
    got = np.asarray(_jit_logits(model)(params, jnp.asarray(x)))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, want, **LOGIT_TOL)
    assert np.abs(got - want).max() > 100 * LOGIT_TOL["atol"]


def test_negative_control_swapped_gate_and_up(llama3):
    model, params, x, want = llama3
    bad = jax.tree.map(lambda a: a, params)
    wi = bad["layer_0"]["mlp"]["wi"]["kernel"]
    bad["layer_0"]["mlp"]["wi"]["kernel"] = wi[:, ::-1, :]
    _far(model, bad, x, want)


def test_negative_control_interleaved_rope_layout(llama3):
    """Meta's interleaved pair order instead of transformers' rotate-half halves."""
    model, params, x, want = llama3
    H = model.config.head_dim
    order = np.concatenate([np.arange(0, H, 2), np.arange(1, H, 2)])
    bad = jax.tree.map(lambda a: a, params)
    for i in range(model.config.num_layers):
        for proj in ("query", "key"):
            k = bad[f"layer_{i}"]["attention"][proj]["kernel"]
            bad[f"layer_{i}"]["attention"][proj]["kernel"] = k[..., np.argsort(order)]
    _far(model, bad, x, want)


@pytest.mark.parametrize("scaling", ["none", "linear"])
def test_negative_control_wrong_rope_scaling(llama3, scaling):
    """Dropping llama3 scaling, or using linear scaling with the same factor, is caught."""
    model, params, x, want = llama3
    wrong = VishwamAI(model.config.replace(rope_scaling=scaling))
    _far(wrong, params, x, want)


def test_rope_frequencies_equal_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases = [(16, 1e4, LLAMA3_SCALING), (128, 5e5, dict(LLAMA3_SCALING, factor=8.0,
                                                         original_max_position_embeddings=8192)),
             (64, 1e6, {"rope_type": "linear", "factor": 4.0})]
    for H, theta, scaling in cases:
        cfg = transformers.LlamaConfig(hidden_size=4 * H, num_attention_heads=4, head_dim=H,
                                       rope_theta=theta, rope_scaling=dict(scaling),
                                       max_position_embeddings=100_000)
        want, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
        got = np.asarray(rope_inv_freq(H, theta, scaling))
        # Within 2 ulp (torch's and numpy's f32 pow/divide round differently now and then).
        np.testing.assert_allclose(got, want.numpy(), rtol=3e-7, atol=0)
        assert not np.allclose(got, np.asarray(rope_inv_freq(H, theta)))  # scaling bites


# ---------------------------------------------------------------- checkpoint handling
def _saved_small(tmp_path, family="llama2"):
    torch.manual_seed(0)
    ref = _widen(FAMILIES[family]())
    ref.save_pretrained(tmp_path)
    return ref


def test_sharded_checkpoints_load(tmp_path):
    ref = _saved_small(tmp_path / "one")
    ref.save_pretrained(tmp_path / "hf_sharded", max_shard_size="40KB")
    assert (tmp_path / "hf_sharded" / hf.SAFETENSORS_INDEX).is_file()
    model, one = VishwamAI.from_pretrained(tmp_path / "one")
    _, sharded = VishwamAI.from_pretrained(tmp_path / "hf_sharded")
    files = model.save_pretrained(tmp_path / "ours_sharded", one, max_shard_bytes=50_000)
    assert sum(f.endswith(".safetensors") for f in files) > 2
    _, ours = VishwamAI.from_pretrained(tmp_path / "ours_sharded")
    for tree in (sharded, ours):
        jax.tree.map(np.testing.assert_array_equal, tree, one)


def test_dtype_cast_and_shardings(tmp_path):
    ref = _saved_small(tmp_path)
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    model, params = VishwamAI.from_pretrained(tmp_path, param_dtype="bfloat16",
                                              shardings=lambda m: jax.tree.map(
                                                  lambda _: sharding, m.abstract_params()))
    assert model.config.param_dtype == "bfloat16" and model.config.dtype == "float32"
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.bfloat16 and leaf.sharding == sharding
    want = ref.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(params["token_embed"]["embedding"], np.float32), want)
    # The package's own sharding tree (a one-device mesh here).
    from vishwamai.sharding import make_mesh, param_shardings

    mesh = make_mesh()
    model, params = VishwamAI.from_pretrained(tmp_path, shardings=lambda m: param_shardings(m, mesh))
    want = param_shardings(model, mesh)
    for got, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert got.sharding == sharding


def _rewrite(path, change):
    file = os.path.join(path, "model.safetensors")
    state = safetensors_numpy.load_file(file)
    change(state)
    safetensors_numpy.save_file(state, file, metadata={"format": "pt"})
    return file


@pytest.mark.parametrize("kind", ["missing", "unexpected", "misshaped"])
def test_bad_checkpoint_names_the_tensor_and_file(tmp_path, kind):
    _saved_small(tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    changes = {
        "missing": lambda s: s.pop(name),
        "unexpected": lambda s: s.update({"model.layers.2.mlp.up_proj.weight": s[name]}),
        "misshaped": lambda s: s.update({name: s[name][:-1]}),
    }
    file = _rewrite(tmp_path, changes[kind])
    with pytest.raises(ValueError) as exc:
        VishwamAI.from_pretrained(tmp_path)
    msg = str(exc.value)
    want = "model.layers.2.mlp.up_proj.weight" if kind == "unexpected" else name
    assert want in msg and file in msg, msg
    assert {"missing": "missing", "unexpected": "unexpected", "misshaped": "shape"}[kind] in msg


def test_scan_layers_checkpoint_is_refused(tmp_path):
    _saved_small(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    json.dump(dict(cfg, scan_layers=True), open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="scan_layers"):
        VishwamAI.from_pretrained(tmp_path)


# ---------------------------------------------------------------- configs vs transformers
@pytest.mark.parametrize("name", sorted(HF_CONFIG_PARAMS))
def test_shipped_config_counts_equal_transformers(name):
    """transformers builds each shipped config on the meta device (nothing allocated): its
    parameter count is the published one, which tests/test_config.py checks our tree against."""
    d = hf_config(name)
    hf_cfg = transformers.AutoConfig.for_model(**d)
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        ref = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    ref.tie_weights()  # a tied head then shares the embedding's Parameter
    n_ref = sum(p.numel() for p in ref.parameters())  # tied weights are one Parameter
    assert n_ref == HF_CONFIG_PARAMS[name]


@pytest.mark.parametrize("hf_act", ["gelu_new", "gelu", "gelu_pytorch_tanh", "relu"])
def test_gpt2_activations_equal_transformers(hf_act):
    """GPT-2's activation_function names, through from_hf, compute transformers' functions:
    'gelu' is the exact erf form, 'gelu_new' / 'gelu_pytorch_tanh' the tanh approximation."""
    from transformers.activations import ACT2FN

    from vishwamai.layers.mlp import _ACT

    cfg = ModelConfig.from_hf(dict(hf_config("gpt2"), activation_function=hf_act))
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    want = ACT2FN[hf_act](torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(_ACT[cfg.mlp_activation](jnp.asarray(x))), want,
                               atol=2e-6, rtol=1e-6)
    if hf_act == "gelu":  # the two forms differ by more than the tolerance
        assert np.abs(np.asarray(_ACT["gelu"](jnp.asarray(x))) - want).max() > 1e-4
