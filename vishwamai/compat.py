"""What differs between the JAX releases the package supports: Colab's (jax 0.7.2) to the
pinned one (0.10). Each shim feature-detects rather than compares version numbers, and says
what it stands in for; `make colab-check` runs the suite on the oldest.
"""
from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp


@functools.cache
def _cpu_has_low_precision_dot() -> bool:
    """Whether XLA:CPU runs a bf16 x bf16 -> f32 dot (jaxlib 0.7 raises "Unsupported element
    type for DotThunk::Execute: BF16 x BF16 = F32"). Probed once with a 2x2 product."""
    with jax.ensure_compile_time_eval():  # a real run, also when first asked inside a trace
        x = jax.device_put(jnp.ones((2, 2), jnp.bfloat16), jax.devices("cpu")[0])
        try:
            y = jnp.einsum("ij,jk->ik", x, x, preferred_element_type=jnp.float32)
            return bool(float(y[0, 0]) == 2.0)
        except jax.errors.JaxRuntimeError:
            return False


def _low_precision(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32


def einsum_f32(subscripts: str, *operands):
    """`jnp.einsum` with f32 accumulation (`preferred_element_type=float32`).

    Where XLA:CPU has no bf16/f16 dot with an f32 result (jaxlib 0.7), the low-precision
    operands are upcast to f32 first on CPU: the products are the same (a product of two bf16
    values is exact in f32) and the sum is f32 either way. Elsewhere it is the plain einsum.
    """
    if (jax.default_backend() == "cpu" and any(_low_precision(o) for o in operands)
            and not _cpu_has_low_precision_dot()):
        operands = tuple(o.astype(jnp.float32) if _low_precision(o) else o for o in operands)
    return jnp.einsum(subscripts, *operands, preferred_element_type=jnp.float32)


def jaxprs_in_params(params: dict):
    """The sub-jaxprs held in a jaxpr equation's params (loop bodies, custom-vjp functions).

    `jax.extend.core.jaxprs_in_params` where it exists (jax >= 0.8), else the same walk.
    """
    core = jax.extend.core
    if hasattr(core, "jaxprs_in_params"):
        yield from core.jaxprs_in_params(params)
        return

    def walk(v):
        if isinstance(v, core.ClosedJaxpr):
            yield v.jaxpr
        elif isinstance(v, core.Jaxpr):
            yield v
        elif isinstance(v, (tuple, list)):
            for x in v:
                yield from walk(x)

    for v in params.values():
        yield from walk(v)
