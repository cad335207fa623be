"""MoE kernels: routing by hand, dropless and capacity paths against the dense reference, and
gradients (router included) through each path against the reference's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.kernels import moe as kmoe

T, D, E, K, F = 24, 16, 8, 2, 12
TOL = dict(atol=1e-5, rtol=1e-5)  # f32: the paths sum the same products in another order


def _weights(seed=0, gated=True):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k[0], (T, D))
    router = jax.random.normal(k[1], (D, E))
    wi = jax.random.normal(k[2], (E, D, 2 * F if gated else F)) / np.sqrt(D)
    wo = jax.random.normal(k[3], (E, F, D)) / np.sqrt(F)
    return x, router, wi, wo


def _run(path, x, router, wi, wo, gated=True, **route_kw):
    routing = kmoe.route(x @ router, top_k=K, **route_kw)
    kw = dict(act=jax.nn.silu if gated else jax.nn.gelu, gated=gated)
    if path == "dense":
        return kmoe.experts_dense(x, routing, wi, wo, **kw)
    if path == "dropless":
        return kmoe.experts_dropless(x, routing, wi, wo, **kw)
    return kmoe.experts_capacity(x, routing, wi, wo, capacity_factor=float(E), **kw)[0]


def test_route_softmax_topk_by_hand():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0]])
    r = kmoe.route(logits, top_k=2, norm_topk=False)
    p = np.exp([1.0, 3.0, 2.0, 0.0]) / np.exp([1.0, 3.0, 2.0, 0.0]).sum()
    assert r.experts_TK.tolist() == [[1, 2]]
    np.testing.assert_allclose(r.weights_TK, [[p[1], p[2]]], rtol=1e-6)
    rn = kmoe.route(logits, top_k=2, norm_topk=True, scaling=2.5)
    np.testing.assert_allclose(rn.weights_TK, [[2.5 * p[1] / (p[1] + p[2]),
                                                2.5 * p[2] / (p[1] + p[2])]], rtol=1e-6)


def test_route_sigmoid_bias_chooses_but_does_not_weigh():
    logits = jnp.array([[0.0, 1.0, 2.0, 3.0]])
    bias = jnp.array([10.0, 0.0, 0.0, 0.0])
    r = kmoe.route(logits, top_k=2, scoring="sigmoid", norm_topk=False, bias_E=bias)
    assert r.experts_TK.tolist() == [[0, 3]]
    s = 1 / (1 + np.exp(-np.array([0.0, 3.0])))
    np.testing.assert_allclose(r.weights_TK, [s], rtol=1e-6)


def test_route_group_limited():
    # groups {0,1} {2,3} {4,5} {6,7}; best two-sum groups are {6,7} and {0,1} although expert
    # 3 alone scores highest among the rest
    logits = jnp.array([[2.0, 2.0, 0.0, 2.5, 0.0, 0.0, 2.2, 2.2]])
    r = kmoe.route(logits, top_k=2, scoring="sigmoid", n_group=4, topk_group=2)
    assert sorted(r.experts_TK[0].tolist()) == [6, 7]
    free = kmoe.route(logits, top_k=2, scoring="sigmoid")
    assert 3 in free.experts_TK[0].tolist()


def test_route_rejects_unknown_scoring():
    with pytest.raises(ValueError, match="scoring"):
        kmoe.route(jnp.zeros((2, 4)), top_k=1, scoring="relu")


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("path", ["dropless", "capacity"])
def test_paths_match_dense_reference(path, gated):
    x, router, wi, wo = _weights(gated=gated)
    ref = _run("dense", x, router, wi, wo, gated)
    out = _run(path, x, router, wi, wo, gated)
    np.testing.assert_allclose(out, ref, **TOL)
    assert float(jnp.abs(ref).max()) > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize("route_kw", [dict(scoring="sigmoid", n_group=4, topk_group=2,
                                           scaling=2.5),
                                      dict(norm_topk=False)])
def test_paths_match_reference_other_routers(route_kw):
    x, router, wi, wo = _weights(1)
    ref = _run("dense", x, router, wi, wo, **route_kw)
    np.testing.assert_allclose(_run("dropless", x, router, wi, wo, **route_kw), ref, **TOL)
    np.testing.assert_allclose(_run("capacity", x, router, wi, wo, **route_kw), ref, **TOL)


@pytest.mark.parametrize("path", ["dropless", "capacity"])
def test_gradients_match_reference(path):
    """d/d(router, wi, wo, x) of a scalar loss: each path against the dense reference."""
    x, router, wi, wo = _weights(2)
    target = jax.random.normal(jax.random.PRNGKey(9), (T, D))

    def loss(p, which):
        y = _run(which, p[0], p[1], p[2], p[3])
        return jnp.sum((y - target) ** 2)

    g_ref = jax.grad(loss)((x, router, wi, wo), "dense")
    g = jax.grad(loss)((x, router, wi, wo), path)
    for a, b, name in zip(g, g_ref, ("x", "router", "wi", "wo")):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)
    assert float(jnp.abs(g_ref[1]).max()) > 1e-3  # the router does receive a gradient


def test_capacity_drops_and_counts():
    x, router, wi, wo = _weights(3)
    routing = kmoe.route(x @ router, top_k=K)
    C = kmoe.expert_capacity(T, K, E, 0.5)
    assert C == 3  # ceil(0.5 * 24 * 2 / 8)
    y, dropped = kmoe.experts_capacity(x, routing, wi, wo, act=jax.nn.silu, capacity_factor=0.5)
    counts = np.bincount(np.asarray(routing.experts_TK).ravel(), minlength=E)
    assert int(dropped) == int(np.maximum(counts - C, 0).sum()) > 0
    # by hand: keep each expert's first C assignments in slot-major order, zero the rest
    ex = np.asarray(routing.experts_TK)
    seen = np.zeros(E, int)
    w = np.asarray(routing.weights_TK).copy()
    for k in range(K):
        for t in range(T):
            e = ex[t, k]
            if seen[e] >= C:
                w[t, k] = 0.0
            seen[e] += 1
    kept = kmoe.Routing(jnp.asarray(w), routing.experts_TK, routing.scores_TE, routing.logits_TE)
    ref = kmoe.experts_dense(x, kept, wi, wo, act=jax.nn.silu)
    np.testing.assert_allclose(y, ref, **TOL)
    with pytest.raises(ValueError, match="capacity_factor"):
        kmoe.expert_capacity(T, K, E, 0.0)


def test_megablox_gmm_interpret_matches_ragged_dot():
    """The TPU kernel (rows padded to a tile) in the Pallas interpreter, against ragged_dot."""
    lhs = jax.random.normal(jax.random.PRNGKey(0), (40, 128))
    rhs = jax.random.normal(jax.random.PRNGKey(1), (4, 128, 128))
    sizes = jnp.array([10, 0, 22, 8], jnp.int32)
    ref = kmoe.grouped_matmul(lhs, rhs, sizes, impl="ragged_dot")
    out = kmoe.grouped_matmul(lhs, rhs, sizes, impl="megablox", interpret=True)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="impl"):
        kmoe.grouped_matmul(lhs, rhs, sizes, impl="cuda")


def test_losses_by_hand():
    logits = jnp.log(jnp.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]]))
    r = kmoe.route(logits, top_k=1)
    # f = [0.5, 0.5, 0, 0]; P = [0.4, 0.4, 0.1, 0.1]; E * sum f P = 4 * 0.4
    np.testing.assert_allclose(kmoe.load_balancing_loss(r), 1.6, rtol=1e-6)
    np.testing.assert_allclose(kmoe.router_z_loss(r), 0.0, atol=1e-6)  # logsumexp of log-probs
    uniform = kmoe.route(jnp.zeros((8, 4)).at[jnp.arange(8), jnp.arange(8) % 4].set(1e-3), top_k=2)
    np.testing.assert_allclose(kmoe.load_balancing_loss(uniform), 2.0, rtol=1e-3)  # = K


def test_dropless_compiles_for_tpu_through_megablox():
    """Traced for a TPU (`compile_target`), the dropless path runs the megablox Pallas kernel:
    XLA:TPU (libtpu, ahead of time on this CPU) compiles it into a Mosaic custom call."""
    from vishwamai.aot import have_libtpu

    if not have_libtpu():
        pytest.skip("libtpu is not installed")
    from vishwamai.aot.compile import compile_on_one_chip

    def fn(x, router, wi, wo):
        routing = kmoe.route(x @ router, top_k=K)
        return kmoe.experts_dropless(x, routing, wi, wo, act=jax.nn.silu)

    Tt, Dt, Ft = 256, 128, 128
    compiled = compile_on_one_chip(fn, ((Tt, Dt), jnp.bfloat16), ((Dt, E), jnp.bfloat16),
                                   ((E, Dt, 2 * Ft), jnp.bfloat16), ((E, Ft, Dt), jnp.bfloat16))
    hlo = compiled.as_text()
    assert "tpu_custom_call" in hlo and "ragged" not in hlo.lower()
