"""Mixture-of-experts checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) against transformers.

As tests/test_hf.py does for the dense families: a small random transformers model of each
family (4 experts, top-2; every weight ~ N(0, 0.3), norm scales ~ N(1, 0.2)) is saved with
`save_pretrained`, loaded with `VishwamAI.from_pretrained` and compared in f32: logits within
LOGIT_TOL, greedy continuations token for token, the round trip bit for bit in both expert
layouts (per-expert as transformers writes files, fused as it holds them), and negative controls (the top-k renormalisation
flipped, two experts swapped) failing by more than 100x the tolerance.
"""
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
from vishwamai.model import VishwamAI  # noqa: E402

# f32 on both sides (torch's and XLA's matmuls sum in different orders); the routing is
# discrete, so a near-tie between two experts' scores could flip a choice: the wide weights
# keep every score gap far above f32 rounding for these inputs.
LOGIT_TOL = dict(atol=2e-4, rtol=1e-5)
V, T_PROMPT, NEW = 256, 24, 6
_SMALL = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, num_experts_per_tok=2)
FAMILIES = {
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **_SMALL, intermediate_size=48, num_local_experts=4, sliding_window=None)),
    "qwen2_moe": lambda: transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        **_SMALL, intermediate_size=96, moe_intermediate_size=32,
        shared_expert_intermediate_size=40, num_experts=4, norm_topk_prob=False)),
    "qwen3_moe": lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **_SMALL, head_dim=16, intermediate_size=96, moe_intermediate_size=32, num_experts=4,
        norm_topk_prob=True)),
    "olmoe": lambda: transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
        **_SMALL, intermediate_size=32, num_experts=4, norm_topk_prob=False)),
}


def _widen(model, std=0.3):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def _tokens(B, T, seed=0):
    return np.random.RandomState(seed).randint(3, V, (B, T)).astype(np.int64)


def _ref_logits(ref, x):
    with torch.no_grad():
        return ref(torch.tensor(x)).logits.numpy()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = _widen(FAMILIES[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    model, params = VishwamAI.from_pretrained(path, attention_impl="reference")
    x = _tokens(2, T_PROMPT + NEW)
    return request.param, ref, path, model, params, x, _ref_logits(ref, x)


def _logits(model, params, x):
    return np.asarray(jax.jit(model.logits)(params, jnp.asarray(x)))


def test_config_fields(pair):
    name, ref, _, model, params, _, _ = pair
    cfg = model.config
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (4, 2)
    assert cfg.norm_topk_prob == (name in ("mixtral", "qwen3_moe"))
    assert cfg.qk_norm == {"qwen3_moe": "head", "olmoe": "full"}.get(name, "none")
    assert (cfg.num_shared_experts, cfg.shared_expert_gate) == ((1, True) if name == "qwen2_moe"
                                                                else (0, False))
    assert cfg.qkv_bias == (name == "qwen2_moe")
    moe = params["layer_0"]["moe"]
    assert moe["wi"].shape == (4, 64, 2, cfg.expert_mlp_dim)


def test_logits_equal_transformers(pair):
    name, _, _, model, params, x, want = pair
    ours = _logits(model, params, x)
    print(f"{name}: max |logit diff| = {np.abs(ours - want).max():.2e} "
          f"(max |logit| {np.abs(want).max():.1f})")
    np.testing.assert_allclose(ours, want, **LOGIT_TOL)


@pytest.mark.parametrize("impl", ["capacity", "dense"])
def test_other_paths_equal_transformers(pair, impl):
    """The capacity path with room for every assignment and the dense reference agree too."""
    _, _, _, model, params, x, want = pair
    cfg = model.config.replace(moe_impl=impl, capacity_factor=4.0)
    np.testing.assert_allclose(_logits(VishwamAI(cfg), params, x), want, **LOGIT_TOL)


def test_greedy_generate_equals_transformers(pair):
    _, ref, _, model, params, _, _ = pair
    x = _tokens(2, T_PROMPT, seed=1)
    ours = np.asarray(model.generate(params, jnp.asarray(x), NEW))
    with torch.no_grad():
        want = ref.generate(torch.tensor(x), max_new_tokens=NEW, do_sample=False,
                            eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, want)


def test_round_trip_is_bit_identical(pair, tmp_path):
    """transformers' file (per-expert layout: what 5.x `save_pretrained` writes) -> our tree ->
    our file: the same names, dtypes and bits; transformers loads ours back to the same model."""
    name, ref, path, model, params, x, want = pair
    theirs = safetensors_numpy.load_file(os.path.join(path, "model.safetensors"))
    assert any(".experts.0." in k for k in theirs)
    ours = model.to_hf_state_dict(params, model_type=name)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    model.save_pretrained(tmp_path, params, model_type=name)
    back = type(ref).from_pretrained(tmp_path).eval()
    for (k, a), (_, b) in zip(sorted(ref.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), k
    np.testing.assert_array_equal(_ref_logits(back, x), want)


def test_fused_layout_round_trip(pair, tmp_path):
    """transformers 5.x's fused in-memory tensors (`experts.gate_up_proj [E, 2F, D]`,
    `experts.down_proj [E, D, F]`): written by us bit for bit as its state_dict, and a file of
    them loads to the same tree as the per-expert file."""
    name, ref, _, model, params, _, _ = pair
    fused = hf.to_hf_state_dict(model.config, params, model_type=name, expert_layout="fused")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert sorted(fused) == sorted(sd)
    assert any(k.endswith("experts.gate_up_proj") for k in fused)
    for k in sd:
        np.testing.assert_array_equal(fused[k], sd[k], err_msg=k)
    safetensors_numpy.save_file(fused, str(tmp_path / "model.safetensors"))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(model.config.to_hf(name), f)
    _, got = VishwamAI.from_pretrained(tmp_path, attention_impl="reference")
    jax.tree.map(np.testing.assert_array_equal, got, params)


def _far(model, params, x, want):
    got = _logits(model, params, x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, want, **LOGIT_TOL)
    return float(np.abs(got - want).max())


def test_negative_control_renormalisation_flipped(pair):
    name, _, _, model, params, x, want = pair
    wrong = VishwamAI(model.config.replace(norm_topk_prob=not model.config.norm_topk_prob))
    assert _far(wrong, params, x, want) > 100 * LOGIT_TOL["atol"]


def test_negative_control_experts_swapped(pair):
    _, _, _, model, params, x, want = pair
    bad = jax.tree.map(lambda a: a, params)
    for w in ("wi", "wo"):
        bad["layer_0"]["moe"][w] = params["layer_0"]["moe"][w][jnp.array([1, 0, 2, 3])]
    assert _far(model, bad, x, want) > 100 * LOGIT_TOL["atol"]


def test_shipped_moe_configs_count_their_published_totals():
    """The shipped config.json files, read by `from_hf`, count the published totals on our tree
    (`jax.eval_shape`); tests/test_hf.py counts transformers' own meta-device models of them."""
    from vishwamai.config import HF_CONFIG_PARAMS, ModelConfig, hf_config

    for name in ("mixtral_8x7b", "qwen3_30b_a3b", "olmoe_1b_7b_0924", "qwen1_5_moe_a2_7b"):
        cfg = ModelConfig.from_hf(hf_config(name))
        assert VishwamAI(cfg).num_params() == HF_CONFIG_PARAMS[name], name
