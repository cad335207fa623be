"""The MoE block in the model: paths equal on one parameter tree, scanned == unrolled, the
recorded balance statistics and losses, shared experts, dense layers before the first MoE one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.config import get_preset
from vishwamai.layers.moe import MoE, moe_losses, update_expert_bias
from vishwamai.transformer import TransformerModel

B, T = 2, 12


def _cfg(**kw):
    return get_preset("tiny_moe").replace(**kw)


def _tokens(cfg, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, cfg.vocab_size)


def _logits(cfg, params, tokens, mutable=False):
    return TransformerModel(cfg).apply({"params": params}, tokens,
                                       mutable=["moe"] if mutable else False)


@pytest.fixture(scope="module")
def tiny():
    cfg = _cfg()
    tokens = _tokens(cfg)
    params = nn.unbox(TransformerModel(cfg).init(jax.random.PRNGKey(0), tokens)["params"])
    return cfg, tokens, params


def test_param_tree(tiny):
    cfg, _, params = tiny
    moe = params["layer_0"]["moe"]
    E, D, F = cfg.num_experts, cfg.hidden_dim, cfg.expert_mlp_dim
    assert moe["wi"].shape == (E, D, 2, F) and moe["wo"].shape == (E, F, D)
    assert moe["router"]["kernel"].shape == (D, E)
    assert "mlp" not in params["layer_0"]


@pytest.mark.parametrize("impl", ["dropless", "capacity"])
def test_model_paths_match_dense(tiny, impl):
    cfg, tokens, params = tiny
    ref = _logits(cfg.replace(moe_impl="dense"), params, tokens)
    kw = {"capacity_factor": float(cfg.num_experts)} if impl == "capacity" else {}
    out = _logits(cfg.replace(moe_impl=impl, **kw), params, tokens)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_capacity_below_one_drops_and_changes_logits(tiny):
    cfg, tokens, params = tiny
    ref = _logits(cfg, params, tokens)
    out, state = _logits(cfg.replace(moe_impl="capacity", capacity_factor=0.25), params, tokens,
                         mutable=True)
    stats = moe_losses(state)
    assert int(stats["dropped"]) > 0
    assert float(jnp.abs(out - ref).max()) > 1e-3


def test_recorded_statistics(tiny):
    cfg, tokens, params = tiny
    _, state = _logits(cfg, params, tokens, mutable=True)
    stats = moe_losses(state)
    L, E, K = cfg.num_layers, cfg.num_experts, cfg.num_experts_per_tok
    assert stats["tokens_per_expert"].shape == (L, E)
    assert stats["tokens_per_expert"].sum(1).tolist() == [B * T * K] * L
    assert int(stats["dropped"]) == 0
    assert 0 < float(stats["aux_loss"]) <= E * K  # E * sum f P: K when balanced, E*K at worst
    assert np.isfinite(float(stats["z_loss"])) and float(stats["z_loss"]) > 0
    assert moe_losses({}) == {}


def test_scanned_equals_unrolled(tiny):
    from vishwamai.transformer import stack_layers

    cfg, tokens, params = tiny
    ref, s_ref = _logits(cfg, params, tokens, mutable=True)
    scfg = cfg.replace(scan_layers=True)
    out, s = _logits(scfg, stack_layers(params, cfg.num_layers), tokens, mutable=True)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    a, b = moe_losses(s_ref), moe_losses(s)
    np.testing.assert_array_equal(a["tokens_per_expert"], b["tokens_per_expert"])
    np.testing.assert_allclose(a["aux_loss"], b["aux_loss"], rtol=1e-6)


def test_router_gradient_dropless_equals_dense(tiny):
    cfg, tokens, params = tiny

    def loss(p, impl):
        out, state = _logits(cfg.replace(moe_impl=impl), p, tokens, mutable=True)
        lp = jax.nn.log_softmax(out[:, :-1])
        nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], -1).mean()
        return nll + 0.01 * moe_losses(state)["aux_loss"]

    g = jax.grad(loss)(params, "dropless")["layer_0"]["moe"]["router"]["kernel"]
    g_ref = jax.grad(loss)(params, "dense")["layer_0"]["moe"]["router"]["kernel"]
    np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=1e-4)
    assert float(jnp.abs(g_ref).max()) > 1e-4


def test_shared_experts_gate_bias_and_dense_first_layer():
    cfg = _cfg(num_shared_experts=1, shared_expert_gate=True, router_bias=True,
               first_dense_layers=1, router_scoring="sigmoid")
    tokens = _tokens(cfg)
    params = nn.unbox(TransformerModel(cfg).init(jax.random.PRNGKey(1), tokens)["params"])
    assert "mlp" in params["layer_0"] and "moe" not in params["layer_0"]
    moe = params["layer_1"]["moe"]
    assert moe["shared_experts"]["wi"]["kernel"].shape == (cfg.hidden_dim, 2,
                                                           cfg.expert_mlp_dim)
    assert moe["shared_gate"]["kernel"].shape == (cfg.hidden_dim, 1)
    assert moe["expert_bias"].shape == (cfg.num_experts,)
    out, state = _logits(cfg, params, tokens, mutable=True)
    assert moe_losses(state)["tokens_per_expert"].shape == (cfg.num_layers - 1, cfg.num_experts)
    assert bool(jnp.isfinite(out).all())
    # a large bias on one expert makes every token choose it; the bias gets no gradient
    params["layer_1"]["moe"]["expert_bias"] = jnp.zeros(cfg.num_experts).at[3].set(100.0)
    _, state = _logits(cfg, params, tokens, mutable=True)
    assert int(moe_losses(state)["tokens_per_expert"][0, 3]) == B * T

    def f(p):
        return _logits(cfg, p, tokens).sum()

    assert float(jnp.abs(jax.grad(f)(params)["layer_1"]["moe"]["expert_bias"]).max()) == 0.0


def test_update_expert_bias_moves_toward_balance():
    bias = jnp.zeros(4)
    new = update_expert_bias(bias, jnp.array([10, 2, 2, 2]), 0.1)
    np.testing.assert_allclose(new, [-0.1, 0.1, 0.1, 0.1])


def test_loss_reports_router_losses_and_the_train_step_trains_them():
    """`VishwamAI.loss` = cross-entropy + aux_coef * aux + z_coef * z, its parts reported; the
    train step's gradient (what `fit` applies) carries the same penalty to the router."""
    from vishwamai import train
    from vishwamai.model import VishwamAI

    cfg = _cfg(router_aux_loss_coef=0.5, router_z_loss_coef=0.1)
    m = VishwamAI(cfg)
    params = m.init(jax.random.PRNGKey(0))
    tokens = _tokens(cfg)
    total, parts = m.loss(params, tokens, return_moe=True)
    want = parts["cross_entropy"] + 0.5 * parts["aux_loss"] + 0.1 * parts["z_loss"]
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert float(total) > float(parts["cross_entropy"]) + 0.5 * cfg.num_experts_per_tok * 0.5
    np.testing.assert_allclose(m.loss(params, tokens), total, rtol=1e-6)

    def router_grad(c):
        loss, g = train.make_grad_fn(VishwamAI(c))(params, tokens, jax.random.PRNGKey(1))
        return loss, g["layer_0"]["moe"]["router"]["kernel"]

    loss_on, g_on = router_grad(cfg)
    loss_off, g_off = router_grad(cfg.replace(router_aux_loss_coef=0.0, router_z_loss_coef=0.0))
    np.testing.assert_allclose(loss_on, total, rtol=1e-5)  # the same objective, chunked
    np.testing.assert_allclose(loss_off, parts["cross_entropy"], rtol=1e-5)
    assert float(jnp.abs(g_on - g_off).max()) > 1e-3  # the penalty moves the router
