"""Attention kernels against the f32 einsum reference: outputs and gradients, every mask kind.

Tolerances, as max |kernel - reference| <= tol * max(1, max |reference|), per array:
- f32: 2e-5. Blockwise online softmax reorders the sums; observed errors are ~1e-6.
- bf16 inputs: 1.6e-2, two bf16 ulps (2**-7 each) at the top of the range. The kernels
  accumulate in f32 (the reference computes in f32 from the same bf16 inputs), so what is
  left is the final rounding of outputs and gradients to bf16.
- logits of magnitude 1e4 (f32, exact integer logits): output and dv as f32; dq and dk, which
  the reference gives as ~0 (one-hot softmax), within 1e-6 * max|q| * max|k| (see the test).
"""
import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.compat import jaxprs_in_params
from vishwamai.kernels import attention as A

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1.6e-2}
HUGE_TOL = 1e-6
# Eager calls dispatch op by op (slow on 2 cores); every direct call below goes through jit.
REF = jax.jit(A.reference_attention, static_argnames="causal")


def _qkv(B, T, S, N, K, H, dtype=jnp.float32, q_scale=1.0, seed=0):
    # numpy draws: jax.random would compile a program per shape.
    r = np.random.default_rng(seed)
    q = jnp.asarray(q_scale * r.standard_normal((B, T, N, H)), dtype)
    k = jnp.asarray(r.standard_normal((B, S, K, H)), dtype)
    v = jnp.asarray(r.standard_normal((B, S, K, H)), dtype)
    return q, k, v


def _ref(q, k, v, **kw):
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    return A.reference_attention(f32(q), f32(k), f32(v), **kw)


def _out_and_grads_eager(fn, q, k, v, **kw):
    # A fixed non-uniform cotangent, so gradients do not cancel to ~0 by symmetry.
    w = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
    return (out, *vjp((w * jnp.ones(out.shape, jnp.float32)).astype(out.dtype)))


def _out_and_grads(fn, q, k, v, **kw):
    """Output and (dq, dk, dv), one compiled program (masks are closed over as constants)."""
    return jax.jit(lambda q, k, v: _out_and_grads_eager(fn, q, k, v, **kw))(q, k, v)


def _assert_close(got, want, tol, names=("out", "dq", "dk", "dv")):
    for name, g, w in zip(names, got, want):
        g = np.asarray(g, np.float32)
        w = np.asarray(w, np.float32)
        assert np.isfinite(g).all(), f"{name} has non-finite values"
        err = np.abs(g - w).max()
        bound = tol * max(1.0, np.abs(w).max())
        assert err <= bound, f"{name}: max abs error {err:.3g} > {bound:.3g}"


def _check(fn, q, k, v, tol=None, **kw):
    tol = TOL[q.dtype.type] if tol is None else tol
    _assert_close(_out_and_grads(fn, q, k, v, **kw), _out_and_grads(_ref, q, k, v, **kw), tol)


def _flash(block):
    return lambda q, k, v, **kw: A.flash_attention(q, k, v, block_q=block, block_k=block, **kw)


# ------------------------------------------------------------------ flash == reference
def _masks(B, N, T, S):
    r = np.random.default_rng(0)
    lengths = np.array([S - 5, 9])[:B]
    key_pad = np.arange(S)[None, None, None, :] < lengths[:, None, None, None]   # [B, 1, 1, S]
    dense = r.random((B, N, T, S)) < 0.6
    dense[0, :, 3, :] = False          # a fully masked row in every head
    dense[-1, 1, 7, :] = False         # and one in a single head
    return {None: None, "key_pad": jnp.asarray(key_pad), "dense": jnp.asarray(dense),
            "per_query": jnp.asarray(r.random((1, 1, T, S)) < 0.5)}


# (B, T, S, N, K, H, block_q, block_k, causal, mask): T == S, T < S and T > S (causal too:
# top-left aligned), T and S not multiples of the blocks, unequal blocks, multi-head, GQA with
# K=2 and K=1 (multi-query), and each kind of boolean mask (one compile per case: the cases
# combine features to keep the file fast on 2 cores).
CASES = [
    (2, 64, 64, 4, 4, 16, 16, 16, False, None),
    (1, 70, 70, 8, 2, 16, 16, 16, True, None),
    (1, 37, 75, 8, 1, 8, 16, 16, True, "per_query"),
    (2, 75, 37, 8, 2, 8, 16, 16, False, "dense"),
    (2, 75, 37, 8, 1, 8, 32, 16, True, "key_pad"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}T{}S{}N{}K{}H{}bq{}bk{}causal{}-{}".format(*c))
def test_flash_matches_reference_f32(case):
    B, T, S, N, K, H, bq, bk, causal, mask = case
    flash = lambda q, k, v, **kw: A.flash_attention(q, k, v, block_q=bq, block_k=bk, **kw)  # noqa: E731
    _check(flash, *_qkv(B, T, S, N, K, H), causal=causal, mask=_masks(B, N, T, S)[mask])


@pytest.mark.parametrize("K,causal", [(2, True), (1, False)])
def test_flash_matches_reference_bf16(K, causal):
    _check(_flash(16), *_qkv(2, 45, 51, 8, K, 16, jnp.bfloat16), causal=causal)


def test_flash_decode_step_mask():
    # What the layer's KV-cache path passes: one query (T=1 < block), the cache, a [1,1,T,S] mask.
    q, k, v = _qkv(2, 1, 40, 4, 2, 8)
    _check(_flash(16), q, k, v, mask=(jnp.arange(40) <= 17)[None, None, None, :])


def test_flash_kv_lengths_and_segment_ids():
    # A zero length makes every row of batch element 1 fully masked; packed sequences in
    # batch element 0, where query segment 7 has no key at all.
    q_seg = jnp.array([[0] * 15 + [1] * 20 + [7] * 5, [2] * 40])
    kv_seg = jnp.array([[0] * 15 + [1] * 25, [2] * 30 + [3] * 10])
    _check(_flash(16), *_qkv(2, 40, 40, 4, 2, 8), causal=True, kv_lengths=jnp.array([33, 0]),
           q_segment_ids=q_seg, kv_segment_ids=kv_seg)


def test_fully_masked_rows_are_zero_with_finite_grads():
    q, k, v = _qkv(1, 20, 20, 2, 1, 8)
    mask = jnp.ones((1, 1, 20, 20), bool).at[:, :, 5].set(False)
    out, dq, dk, dv = _out_and_grads(_flash(8), q, k, v, mask=mask, causal=True)
    assert np.all(np.asarray(out[0, 5]) == 0)
    assert np.all(np.asarray(dq[0, 5]) == 0)
    for g in (dq, dk, dv):
        assert np.isfinite(np.asarray(g)).all()


def test_flash_huge_logits():
    """Logits of magnitude 1e4: finite, and equal to the reference.

    Integer q (|q| <= 200) and k (|k| <= 10), H=16, scale 1 make the logits exact integers, so
    the comparison measures the softmax, not f32 rounding of the logits. Softmax is one-hot
    here, so the reference's dq and dk are ~0; the FlashAttention-2 backward forms
    dS = P * (dP - delta) with delta = rowsum(dO * O) instead of rowsum(P * dP), equal up to
    f32 rounding of dP, which dq = dS k and dk = dS^T q scale by |k| and |q|: those two are
    bounded by HUGE_TOL * max|q| * max|k|.
    """
    r = np.random.default_rng(3)
    q = jnp.asarray(r.integers(-200, 201, (1, 40, 2, 16)), jnp.float32)
    k = jnp.asarray(r.integers(-10, 11, (1, 40, 1, 16)), jnp.float32)
    v = jnp.asarray(r.standard_normal((1, 40, 1, 16)), jnp.float32)
    logits = jnp.einsum("btnh,bsh->bnts", q, k[:, :, 0])
    assert float(jnp.abs(logits).max()) > 1e4
    kw = dict(causal=True, scale=1.0)
    got, want = _out_and_grads(_flash(16), q, k, v, **kw), _out_and_grads(_ref, q, k, v, **kw)
    _assert_close(got[::3], want[::3], TOL[jnp.float32], names=("out", "dv"))
    bound = HUGE_TOL * float(jnp.abs(q).max() * jnp.abs(k).max())
    for name, g, w in zip(("dq", "dk"), got[1:3], want[1:3]):
        assert np.isfinite(np.asarray(g)).all(), name
        assert float(jnp.abs(g - w).max()) <= bound, (name, float(jnp.abs(g - w).max()), bound)


def test_flash_skips_blocks_above_the_diagonal():
    """Key blocks wholly in the future are never visited, not merely masked: NaN values there
    (which a masked visit would spread as 0 * NaN) leave earlier query blocks untouched."""
    q, k, v = _qkv(1, 64, 64, 2, 2, 8)
    v_nan = v.at[:, 32:].set(jnp.nan)
    flash = jax.jit(functools.partial(A.flash_attention, block_q=16, block_k=16),
                    static_argnames="causal")
    out = flash(q, k, v_nan, causal=True)
    want = REF(q[:, :32], k[:, :32], v[:, :32], causal=True)
    np.testing.assert_allclose(out[:, :32], want, atol=2e-5)
    assert np.isnan(np.asarray(out[:, 32:])).all()       # later rows do see the NaN keys
    # The same with kv_lengths: key blocks past the longest sequence are skipped too.
    out = flash(q, k, v_nan, kv_lengths=jnp.array([32]))
    want = REF(q, k[:, :32], v[:, :32])
    np.testing.assert_allclose(out, want, atol=2e-5)


@pytest.mark.parametrize("T,S,bq,bk", [(1024, 1024, 256, 256), (100, 70, 32, 32),
                                       (300, 500, 64, 128), (8, 40, 16, 16)])
def test_tile_map_matches_the_kernel_loop_bounds(T, S, bq, bk):
    tiles = A.flash_tile_map(T, S, causal=True, block_q=bq, block_k=bk)
    bq_, n_q = A._plan_blocks(T, bq)
    bk_, n_k = A._plan_blocks(S, bk)
    cfg = A._FlashConfig(True, T, S, bq_, bk_, n_q, n_k, False, False, False)
    assert tiles.shape == (n_q, n_k)
    for i in range(n_q):
        hi = int(A._k_blocks_for_q_block(cfg, {}, i))
        assert (tiles[i] > 0).sum() == hi and (tiles[i, :hi] > 0).all()
    full = A.flash_tile_map(T, S, causal=False, block_q=bq, block_k=bk)
    assert (full > 0).all() and ((full == 2).any() == (n_k * bk_ != S))


def test_flash_jit_equals_no_jit():
    q, k, v = _qkv(2, 20, 20, 2, 1, 8)
    kw = dict(causal=True, kv_lengths=jnp.array([20, 13]))
    eager = _out_and_grads_eager(_flash(8), q, k, v, **kw)
    jitted = _out_and_grads(_flash(8), q, k, v, **kw)
    _assert_close(jitted, eager, 1e-6)


def test_flash_memory_is_linear_per_the_compiler():
    """Compiled fwd+bwd scratch of flash stays far below a single f32 [T, S] logits matrix per
    head, while the reference needs several (compile only; nothing runs)."""
    B, T, N, H = 1, 1024, 4, 32
    s = jax.ShapeDtypeStruct((B, T, N, H), jnp.float32)

    def temp_bytes(fn):
        g = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v, causal=True).sum(), (0, 1, 2)))
        return g.lower(s, s, s).compile().memory_analysis().temp_size_in_bytes

    one_logits_matrix = B * N * T * T * 4
    flash = temp_bytes(lambda *a, **kw: A.flash_attention(*a, block_q=128, block_k=128, **kw))
    ref = temp_bytes(A.reference_attention)
    assert flash < one_logits_matrix / 4
    assert ref > one_logits_matrix


def _largest_intermediate(jaxpr) -> int:
    """Elements of the largest value any equation produces, sub-jaxprs (loops, custom_vjp) included."""
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
        for sub in jaxprs_in_params(eqn.params):
            biggest = max(biggest, _largest_intermediate(sub))
    return biggest


@pytest.mark.parametrize("causal", [False, True])
def test_flash_never_builds_a_t_by_s_array(causal):
    """Tracing only: no value in the forward+backward program of the causal or unmasked path
    has as many elements as one head's [T, S] scores (the tiles are [B, K, 64, G, 64])."""
    B, T, S, N, K, H = 1, 512, 640, 4, 2, 16
    q = jax.ShapeDtypeStruct((B, T, N, H), jnp.float32)
    kv = jax.ShapeDtypeStruct((B, S, K, H), jnp.float32)
    f = lambda q, k, v: A.flash_attention(q, k, v, causal=causal, block_q=64,  # noqa: E731
                                          block_k=64).sum()
    jaxpr = jax.make_jaxpr(jax.grad(f, (0, 1, 2)))(q, kv, kv).jaxpr
    assert _largest_intermediate(jaxpr) < T * S
    ref = jax.make_jaxpr(jax.grad(lambda q, k, v: A.reference_attention(q, k, v).sum(),
                                  (0, 1, 2)))(q, kv, kv).jaxpr
    assert _largest_intermediate(ref) >= B * N * T * S      # the check does see a [T, S] array


# ------------------------------------------------------------------ the other implementations
def test_xla_matches_reference_with_masks_and_empty_rows():
    B, T, S, N, K, H = 2, 24, 30, 8, 2, 8
    q, k, v = _qkv(B, T, S, N, K, H)
    xla = lambda q, k, v, **kw: A.attention(q, k, v, implementation="xla", **kw)  # noqa: E731
    _check(xla, q, k, v, causal=True, mask=_masks(B, N, T, S)["dense"],
           kv_lengths=jnp.array([11, 0]),
           q_segment_ids=jnp.zeros((B, T), int).at[:, -3:].set(5),
           kv_segment_ids=jnp.zeros((B, S), int))


def test_auto_and_reference_dispatch():
    q, k, v = _qkv(1, 16, 16, 4, 2, 8)
    want = REF(q, k, v, causal=True)
    for impl in ("auto", "flash", "xla"):
        got = jax.jit(functools.partial(A.attention, causal=True, implementation=impl))(q, k, v)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=impl)
    assert A.select_implementation(q, k, backend="cpu") == "xla"
    # The CPU switch is at T*S = 256**2 (measured; kernels/attention.py), GPU's at 512**2.
    t255, t256 = (jax.ShapeDtypeStruct((1, t, 4, 8), jnp.float32) for t in (255, 256))
    assert A.select_implementation(t255, t255, backend="cpu") == "xla"
    assert A.select_implementation(t256, t256, backend="cpu") == "flash"
    assert A.select_implementation(t256, t256, backend="gpu") in ("xla", "cudnn")
    long_q = jax.ShapeDtypeStruct((1, 2048, 4, 8), jnp.float32)
    assert A.select_implementation(long_q, long_q, backend="cpu") == "flash"
    assert A.select_implementation(long_q, long_q, backend="tpu") == "pallas_tpu"
    assert A.select_implementation(long_q, long_q, mask=jnp.ones((1, 1, 2048, 2048), bool),
                                   backend="tpu") == "flash"


def test_available_implementations():
    assert set(A.available_implementations("cpu")) == {"auto", "reference", "flash", "xla"}
    assert "pallas_tpu" in A.available_implementations("tpu")
    assert "cudnn" in A.available_implementations("gpu")
    assert set(A.available_implementations()) <= set(A.IMPLEMENTATIONS)


@pytest.mark.parametrize("impl", ["cudnn", "pallas_tpu"])
def test_impossible_backend_raises_clear_error(impl):
    if impl in A.available_implementations():
        pytest.skip(f"{impl} runs on this backend")
    q, k, v = _qkv(1, 8, 8, 2, 2, 8)
    with pytest.raises(ValueError, match=f"'{impl}'.*cannot run.*available here.*'flash'"):
        A.attention(q, k, v, implementation=impl)


def test_bad_arguments_raise():
    q, k, v = _qkv(1, 8, 10, 2, 2, 8)
    with pytest.raises(ValueError, match="unknown attention implementation 'fast'"):
        A.attention(q, k, v, implementation="fast")
    with pytest.raises(ValueError, match="does not broadcast"):
        A.flash_attention(q, k, v, mask=jnp.ones((1, 1, 8, 9), bool))
    with pytest.raises(ValueError, match="boolean"):
        A.attention(q, k, v, mask=jnp.ones((1, 1, 8, 10)))
    with pytest.raises(ValueError, match="given together"):
        A.flash_attention(q, k, v, q_segment_ids=jnp.zeros((1, 8), int))
    with pytest.raises(ValueError, match="kv_lengths"):
        A.flash_attention(q, k, v, kv_lengths=jnp.array([3, 4]))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        A.flash_attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))
    with pytest.raises(ValueError, match="block_q=-1"):
        A.flash_attention(q, k, v, block_q=-1)


def test_pallas_tpu_kernel_in_interpret_mode():
    """JAX's splash-attention TPU kernel runs on CPU in Pallas' TPU interpreter (slow: one
    config). Covers the [B,T,N,H] <-> [B,N,T,H] adapter, padding to 128, GQA, kv_lengths with a
    fully masked batch element, and gradients."""
    q, k, v = _qkv(2, 100, 150, 2, 1, 16)
    fn = lambda q, k, v, **kw: A.pallas_tpu_attention(q, k, v, interpret=True, **kw)  # noqa: E731
    _check(fn, q, k, v, causal=True, kv_lengths=jnp.array([90, 0]))
    with pytest.raises(ValueError, match="general masks"):
        fn(q, k, v, mask=jnp.ones((2, 1, 100, 150), bool))
    if jax.default_backend() != "tpu":
        with pytest.raises(ValueError, match="needs a TPU"):
            A.pallas_tpu_attention(q, k, v)


# ------------------------------------------------------------------ the model's attention layer
def test_attention_layer_with_flash_equals_reference():
    """The model's attention layer (`FlashAttention`, GQA `tiny` preset with RoPE) gives the same
    output and the same gradients w.r.t. its parameters and input with attention_impl='flash'
    as with 'reference'. Same module, so one set of parameters serves both."""
    from vishwamai.config import PRESETS
    from vishwamai.layers.attention import FlashAttention

    cfg = PRESETS["tiny"]
    B, T = 2, 40
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, cfg.hidden_dim)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    params = jax.jit(FlashAttention(cfg.replace(attention_impl="reference")).init)(
        jax.random.PRNGKey(0), x, pos)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, cfg.hidden_dim)), jnp.float32)
    results = {}
    for impl in ("reference", "flash"):
        layer = FlashAttention(cfg.replace(attention_impl=impl))
        loss = lambda p, x: (layer.apply(p, x, pos) * w).sum()  # noqa: E731
        results[impl] = jax.jit(lambda p, x: (layer.apply(p, x, pos),
                                              jax.grad(loss, (0, 1))(p, x)))(params, x)
    ref, fl = results["reference"], results["flash"]
    for g_f, g_r in zip(jax.tree_util.tree_leaves(fl), jax.tree_util.tree_leaves(ref)):
        scale = max(1.0, float(jnp.abs(g_r).max()))
        np.testing.assert_allclose(g_f, g_r, atol=TOL[jnp.float32] * scale)


# ------------------------------------------------------------------ the benchmark's plumbing
def test_benchmark_helpers():
    """`vishwamai.benchmarks.attention` (figures come from running it, not from tests)."""
    import argparse

    from vishwamai.benchmarks import attention as bench

    xs = [1024, 2048, 4096, 8192]
    assert bench.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert bench.loglog_slope(xs, [5 * x for x in xs], 2048, 8192) == pytest.approx(1.0)
    assert bench.seed_estimates(2, 4, 100) == {"seed_attention_bytes": 2 * 4 * 100 * 100 * 2,
                                               "seed_flash_bytes": 2 * 4 * 100 * 2}
    row = bench.memory_row("flash", 64, N=2, H=8, block_q=32, block_k=32, forward_too=False)
    assert row["status"] == "ok" and row["temp_bytes"] > 0
    parser = bench.add_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--impls", "flash", "xla"]).impls == ["flash", "xla"]
    if "cudnn" not in A.available_implementations():
        with pytest.raises(SystemExit):
            parser.parse_args(["--impls", "cudnn"])
