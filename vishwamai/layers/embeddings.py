"""Token and learned-position embedding tables; `attend` is the tied output head."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Embed(nn.Module):
    """A `[num_embeddings, features]` table, looked up by integer ids.

    `attend(x_BTD)` multiplies by the transposed table (`'BTD,VD->BTV'`), the tied output head.
    """

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    stddev: float = 0.02

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.stddev), self.axes),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        # An id outside [0, num_embeddings) reads a row of NaN (never another row: a negative
        # id would otherwise wrap around to the end of the table), so a bad id under jit,
        # where the caller's host-side check cannot see values, still shows in the output.
        ids = jnp.where(ids < 0, self.num_embeddings, ids)
        return jnp.take(self.embedding, ids, axis=0, mode="fill",
                        fill_value=jnp.nan).astype(self.dtype)

    def attend(self, x_BTD):
        return jnp.einsum("BTD,VD->BTV", x_BTD.astype(self.dtype), self.embedding.astype(self.dtype))
