"""Shared fixtures. JAX runs on the host CPU; matmuls in full f32 so tolerances mean what they say."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)
