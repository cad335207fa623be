"""What differs between Colab's JAX (0.7.2) and the pinned one: each shim gives the same numbers as the
direct call it stands in for, whichever release runs."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from vishwamai import compat
from vishwamai.kernels.fp8 import FP8_E4M3, quantize_fp8


def test_fp8_cast_rounds_once_eager_and_jitted():
    """Values just above a midpoint of two fp8 neighbours, where rounding through bf16 first
    lands on the midpoint and then on the wrong side (7.2504 -> 7.25 -> 7.0; right: 7.5)."""
    x = jnp.array([[7.2503815, 2.6259193, -61.986374, 25.004852, 447.0]], jnp.float32)
    want = np.asarray(x).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    for fn in (quantize_fp8, jax.jit(quantize_fp8)):
        q, scale = fn(x)
        assert float(scale) == 1.0 and q.dtype == FP8_E4M3
        np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32)), want)
    np.testing.assert_array_equal(want[0, :3], [7.5, 2.75, -60.0])


def test_jaxprs_in_params_finds_loop_bodies():
    def f(x):
        return jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0, x)

    jaxpr = jax.make_jaxpr(f)(1.0).jaxpr
    subs = [s for e in jaxpr.eqns for s in compat.jaxprs_in_params(e.params)]
    assert subs and any(any(q.primitive.name == "mul" for q in s.eqns) for s in subs)


def test_bf16_attention_runs_and_matches_f32_products():
    """jax.nn's bf16 attention on this CPU, through the package's xla path (upcast where the
    CPU cannot run the bf16 dot algorithm): close to the f32 attention of the same values."""
    from vishwamai.kernels.attention import attention
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, 8, 2, 16)).astype(jnp.bfloat16)
               for i in range(3))
    out = jax.jit(lambda *a: attention(*a, causal=True, implementation="xla"))(q, k, v)
    ref = attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True,
                    implementation="reference")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=2e-2)
    assert isinstance(compat.cpu_runs_low_precision_dots(), bool)


def test_einsum_f32_equals_the_f32_product_of_bf16_values():
    a = jax.random.normal(jax.random.PRNGKey(0), (4, 64)).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (64, 8)).astype(jnp.bfloat16)
    got = jax.jit(lambda x, y: compat.einsum_f32("ij,jk->ik", x, y))(a, b)
    want = np.asarray(a, np.float32) @ np.asarray(b, np.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-5)
