"""Scanned decoder blocks (`ModelConfig.scan_layers`): the same function from the same numbers.

A scanned model holds its L blocks as one `layers` subtree with [L, ...] leaves; `stack_layers`
/ `unstack_layers` convert trees between the layouts. With converted parameters both layouts
must give the same logits, gradients, cached generation and parameter counts, and the scanned
program must not grow with depth.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.subprocess_devices import eight_device_result, register

from vishwamai import sharding, train, verify
from vishwamai.analysis.params import count_params, tree_param_count
from vishwamai.config import ModelConfig, get_preset
from vishwamai.model import VishwamAI
from vishwamai.transformer import create_vishwamai_transformer, stack_layers, unstack_layers

# f32 with highest-precision matmuls (conftest): the two layouts run the same ops in the same
# order per layer, so they differ only by XLA's fusion choices: ~1e-7 seen, 1e-5 asserted.
ATOL = 1e-5
L = 2


def _cfg(**kw):
    return get_preset("tiny").replace(num_layers=L, max_seq_len=64, **kw)


def _pair(**kw):
    """(unrolled model, its params, scanned model, the same params stacked)."""
    u = VishwamAI(_cfg(**kw))
    s = VishwamAI(_cfg(scan_layers=True, **kw))
    pu = u.init(jax.random.PRNGKey(0))
    return u, pu, s, stack_layers(pu, L)


@pytest.fixture(scope="module")
def pair():
    return _pair()


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.PRNGKey(1), (2, 17), 0, 256)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------------ config, layout
def test_scan_layers_must_be_bool():
    with pytest.raises(ValueError, match="scan_layers"):
        _cfg(scan_layers="yes")


def test_default_layout_keeps_the_seed_tree():
    # The seed's calls: init/apply of create_vishwamai_transformer with its dict keys.
    cfg = dict(vocab_size=256, num_layers=2, num_heads=4, head_dim=16, hidden_dim=64,
               mlp_dim=128, max_seq_len=32, dropout_rate=0.0, use_enhanced=True,
               use_rotary=True, use_flash_attn=True, use_rms_norm=True, dtype="float32")
    model = create_vishwamai_transformer(cfg)
    x = jnp.zeros((1, 8), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert {"layer_0", "layer_1"} <= set(params) and "layers" not in params
    assert model.apply({"params": params}, x, train=False).shape == (1, 8, 256)


def test_scanned_tree_is_the_stacked_unrolled_tree(pair):
    u, pu, s, ps = pair
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), s.abstract_params())
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ps) == shapes
    assert shapes["layers"]["attention"]["query"]["kernel"][0] == (L, 64, 4, 16)


def test_stack_unstack_round_trip_is_exact(pair):
    _, pu, _, ps = pair
    back = unstack_layers(ps)
    assert jax.tree.structure(back) == jax.tree.structure(pu)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(pu)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    again = stack_layers(back, L)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(ps)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_stack_layers_rejects_bad_trees(pair):
    _, pu, _, ps = pair
    with pytest.raises(ValueError, match="layer_2"):
        stack_layers(pu, L + 1)
    with pytest.raises(ValueError, match="beyond num_layers"):
        stack_layers(pu, L - 1)
    with pytest.raises(ValueError, match="num_layers"):
        stack_layers(pu, 0)
    with pytest.raises(ValueError, match="params must be a mapping"):
        stack_layers([pu], L)
    with pytest.raises(ValueError, match="already has"):
        stack_layers(ps, L)
    with pytest.raises(ValueError, match="no stacked 'layers'"):
        unstack_layers(pu)
    ragged = dict(ps, layers={"a": jnp.zeros((3, 2)), "b": jnp.zeros((1, 2))})
    with pytest.raises(ValueError, match="leading layer axis"):
        unstack_layers(ragged)


def test_convert_params_picks_the_model_layout(pair):
    u, pu, s, ps = pair
    assert "layers" in s.convert_params(pu) and "layer_0" in u.convert_params(ps)
    assert s.convert_params(ps) is ps


def test_every_stacked_parameter_gets_a_leading_layers_axis(pair):
    _, _, s, _ = pair
    axes = s.param_axes()
    for spec in jax.tree.leaves(axes["layers"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        assert spec[0] == "layers", spec
    assert axes["token_embed"]["embedding"][0] == "vocab"
    assert dict(sharding.LOGICAL_AXIS_RULES)["layers"] is None


def test_param_counts_hold_for_the_scanned_tree(pair):
    u, _, s, _ = pair
    assert tree_param_count(s.abstract_params()) == count_params(s.config)["total"]
    assert s.param_breakdown() == u.param_breakdown()
    assert verify.tree_params(s.config) == verify.tree_params(u.config)


def test_kv_cache_bytes_hold_for_the_scanned_cache():
    a = verify.kv_cache_tree_bytes(_cfg(), 2, 32)
    assert a > 0 and verify.kv_cache_tree_bytes(_cfg(scan_layers=True), 2, 32) == a


def test_weight_decay_mask_reads_names_not_ranks(pair):
    _, _, _, ps = pair
    mask = train.decay_mask(ps)
    assert ps["layers"]["pre_mlp_norm"]["scale"].ndim == 2  # [L, D]: rank alone would decay it
    assert not mask["layers"]["pre_mlp_norm"]["scale"]
    assert mask["layers"]["mlp"]["wo"]["kernel"]


# ------------------------------------------------------------------------------ equivalence
# The non-default paths in one variant: remat inside the scan, the fp8 matmuls, the 2-matrix
# GELU MLP and the reference attention kernel.
@pytest.mark.parametrize("kw", [{}, {"remat": "full", "use_fp8": True, "mlp_activation": "gelu",
                                     "attention_impl": "reference"}],
                         ids=["default", "remat_fp8_gelu_reference"])
def test_scanned_equals_unrolled_logits_and_grads(kw, tokens):
    u, pu, s, ps = _pair(**kw)

    def both(m):
        return jax.jit(lambda p, t: (m.logits(p, t), jax.grad(m.loss)(p, t)))

    lu, gu = both(u)(pu, tokens)
    ls, gs = both(s)(ps, tokens)
    np.testing.assert_allclose(ls, lu, atol=ATOL, rtol=0)
    assert _max_diff(stack_layers(gu, L), gs) < ATOL


def test_scanned_cache_and_generation_equal_unrolled(pair, tokens):
    u, pu, s, ps = pair
    assert s.init_cache(2, 24)["layers"]["attention"]["cached_key"].shape == (L, 2 * 2, 24, 16)   # [L, K*B, S, H]
    # Greedy: the prefill and every cached decode step must pick the same tokens.
    gen_u = u.generate(pu, tokens[:, :5], 8)
    gen_s = s.generate(ps, tokens[:, :5], 8)
    np.testing.assert_array_equal(gen_s, gen_u)


def test_scanned_dropout_is_live(pair, tokens):
    _, _, s, ps = pair
    s = VishwamAI(s.config.replace(dropout_rate=0.5))
    f = jax.jit(lambda p, t, r: s.logits(p, t, train=True, rng=r))
    a, b = f(ps, tokens, jax.random.PRNGKey(5)), f(ps, tokens, jax.random.PRNGKey(6))
    assert bool(jnp.all(jnp.isfinite(a))) and float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_checkpoints_restore_across_layouts(pair, tmp_path):
    u, pu, s, ps = pair
    u.save(tmp_path / "unrolled", pu)
    s.save(tmp_path / "scanned", ps)
    into_s = s.restore(tmp_path / "unrolled")
    into_u = u.restore(tmp_path / "scanned")
    assert _max_diff(into_s, ps) == 0.0 and _max_diff(into_u, pu) == 0.0
    assert jax.tree.structure(into_u) == jax.tree.structure(pu)


# ------------------------------------------------------------------------------ compile size
def _hlo_lines(num_layers: int, scan: bool) -> int:
    m = VishwamAI(_cfg().replace(num_layers=num_layers, scan_layers=scan))
    lowered = jax.jit(jax.grad(m.loss)).lower(m.abstract_params(),
                                              jax.ShapeDtypeStruct((2, 33), jnp.int32))
    return lowered.as_text().count("\n")


def test_scanned_program_does_not_grow_with_depth():
    # A structural proxy for compile time (no wall clock in tests): the lowered train-step
    # program. Scanned: one block body whatever L (seen: equal line counts at L=2 and 16).
    # Unrolled: one copy per layer (seen: ~6x from L=2 to 16).
    s2, s16 = _hlo_lines(2, True), _hlo_lines(16, True)
    u2, u16 = _hlo_lines(2, False), _hlo_lines(16, False)
    assert s16 <= 1.2 * s2, (s2, s16)
    assert u16 >= 4 * u2, (u2, u16)


def test_compiler_flops_count_every_scanned_layer():
    # cost_analysis() counts a while loop's body once; forward_flops compiles the unrolled
    # layout so the count covers all L layers either way.
    cfg = _cfg(attention_impl="reference").replace(num_layers=4)
    a = verify.forward_flops(cfg, batch=1, seq_len=32)
    assert verify.forward_flops(cfg.replace(scan_layers=True), batch=1, seq_len=32) == a


SHARDED_CHILD = r"""
import json, jax, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from vishwamai import sharding, train
from vishwamai.config import ModelConfig
from vishwamai.model import VishwamAI
from vishwamai.transformer import stack_layers
assert jax.device_count() == 8, jax.devices()
cfg = ModelConfig(vocab_size=256, num_layers=2, num_heads=8, head_dim=8, hidden_dim=64,
                  mlp_dim=128, max_seq_len=64, mlp_activation="swiglu", tie_embeddings=False,
                  attention_impl="reference", name="scan_shard_test")
u, s = VishwamAI(cfg), VishwamAI(cfg.replace(scan_layers=True))
opt = train.make_optimizer(1e-3, warmup_steps=1, total_steps=10)
tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 17), 0, 256)
ref = train.create_train_state(u, opt, jax.random.PRNGKey(3))
ref2, ref_m = train.make_train_step(u, opt, donate=False)(ref, tokens)
mesh = sharding.mesh_for_layout("fsdp", 8)
state = train.create_train_state(s, opt, jax.random.PRNGKey(3),
                                 params=stack_layers(ref.params, 2))
state = jax.device_put(state, sharding.state_shardings(s, opt, mesh))
state2, m = sharding.make_sharded_train_step(s, opt, mesh, batch_size=8)(state, tokens)
err = max(float(jnp.max(jnp.abs(a - b))) for a, b in
          zip(jax.tree.leaves(state2.params), jax.tree.leaves(stack_layers(ref2.params, 2))))
shapes = sharding.shard_shapes(state2.params)
print(json.dumps({"loss": float(m["loss"]), "ref_loss": float(ref_m["loss"]), "param_err": err,
                  "wi": shapes["layers/mlp/wi/kernel"]}))
"""


register("scan", __file__, SHARDED_CHILD)


def test_sharded_scanned_train_step_equals_single_device_unrolled(request):
    r = eight_device_result("scan", request)
    # Sharded reductions only reorder f32 sums (as in test_sharding.py).
    assert abs(r["loss"] - r["ref_loss"]) <= 1e-5 * abs(r["ref_loss"])
    assert r["param_err"] <= 1e-5, r["param_err"]
    # [L, D, 2, F]: the layer axis stays whole, 'embed' is split 8 ways by FSDP.
    assert r["wi"] == [[2, 64, 2, 128], [2, 8, 2, 128]]


def test_compile_seconds_reports_one_compile_and_rejects_bad_input():
    from vishwamai.benchmarks import compilation

    r = compilation.compile_seconds("tiny", scan=True, num_layers=1, seq_len=16)
    assert r["status"] == "ok" and r["compile_s"] > 0 and r["compile_cpu_s"] > 0
    assert (r["num_layers"], r["scan_layers"], r["devices"], r["batch_size"]) == (1, True, 1, 1)
    with pytest.raises(ValueError, match="scan must be a bool"):
        compilation.compile_seconds("tiny", scan=1)
    with pytest.raises(ValueError, match="backend"):
        compilation.target_devices("")
