"""`kernels.decode.cached_attention` (the decode step's attention over the `[K*B, S, H]` cache)
against the plain reference attention on the same cache unmerged."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.kernels.attention import reference_attention
from vishwamai.kernels.decode import cached_attention, merge_cache, split_cache

ATOL = RTOL = 1e-5   # f32, the same arithmetic in another order


@pytest.mark.parametrize("B,T,N,K,S", [(1, 1, 8, 8, 33), (3, 1, 8, 2, 16), (2, 4, 4, 1, 9)])
def test_cached_attention_equals_the_reference(B, T, N, K, S):
    H = 16
    kq, kk, kv, km = jax.random.split(jax.random.PRNGKey(B * 100 + N), 4)
    q = jax.random.normal(kq, (B, T, N, H))
    k = jax.random.normal(kk, (B, S, K, H))
    v = jax.random.normal(kv, (B, S, K, H))
    filled = S - 3                                   # the last T filled positions are queries
    q_pos = filled - T + jnp.arange(T)
    mask = (jnp.arange(S)[None, :] <= q_pos[:, None])[None, None]          # [1, 1, T, S]
    pad = jax.random.bernoulli(km, 0.8, (B, S)).at[:, 0].set(True)
    mask = mask & pad[:, None, None, :]
    got = cached_attention(q, merge_cache(k), merge_cache(v), mask)
    want = reference_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


def test_merge_and_split_are_inverse_and_head_major():
    x = jnp.arange(2 * 5 * 3 * 4, dtype=jnp.float32).reshape(2, 5, 3, 4)   # [B, S, K, H]
    m = merge_cache(x)
    assert m.shape == (3 * 2, 5, 4)
    np.testing.assert_array_equal(m[1 * 2 + 0], x[0, :, 1])                 # row k*B + b
    np.testing.assert_array_equal(split_cache(m, 2), x)


def test_a_query_that_sees_no_key_returns_zeros():
    q = jnp.ones((1, 1, 2, 8))
    k = v = jnp.ones((2, 4, 8))
    out = cached_attention(q, k, v, jnp.zeros((1, 1, 1, 4), bool))
    np.testing.assert_array_equal(out, 0.0)


def test_bad_shapes_name_the_layout():
    with pytest.raises(ValueError, match=r"\[K\*B, S, H\]"):
        cached_attention(jnp.ones((2, 1, 3, 8)), jnp.ones((4, 5, 8)), jnp.ones((4, 5, 8)))
