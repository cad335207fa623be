"""Shared fixtures. JAX runs on the host CPU; matmuls in full f32 so tolerances mean what they say."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import vishwamai  # noqa: E402,F401  (first: JAX and its plugins start without probe noise)
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# XLA's RngBitGenerator instead of threefry: initialisers compile ~4x faster (each threefry
# call is inlined into the program) and the suite tests models, not the PRNG's bit stream.
jax.config.update("jax_default_prng_impl", "rbg")


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)
