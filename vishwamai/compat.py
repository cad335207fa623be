"""What differs between the JAX releases the package supports: Colab's (jax 0.7.2) to the
pinned one (0.10). Each shim says what it stands in for and feature-detects where a probe can
tell; `make colab-check` runs the suite on the oldest. (The fp8 cast's
difference is handled where it arises, in `kernels.fp8._to_fp8`.)
"""
from __future__ import annotations

import re

import jax
import jax.extend.core
import jax.numpy as jnp


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


def cpu_runs_low_precision_dots() -> bool:
    """Whether XLA:CPU executes bf16 x bf16 -> f32 dots (an f32 result of bf16 operands, as
    `preferred_element_type=float32` and `jax.nn.dot_product_attention`'s BF16_BF16_F32
    algorithm ask for).

    jaxlib 0.7 (Colab's) compiles them and then fails at run time on the dots its thunk
    runtime executes ("Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32",
    seen in the chunked loss and the attention backward); a small probe product is emitted
    differently and runs, so this goes by the jaxlib release: False before 0.8, True from the
    pinned 0.10 on.
    """
    return _JAXLIB >= (0, 8)


def _low_precision(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32


def upcast_for_cpu(*operands):
    """The operands, low-precision ones in f32 where the CPU cannot run their dot with an f32
    result (`cpu_runs_low_precision_dots`); unchanged elsewhere. The products are the same (a
    product of two bf16 values is exact in f32) and the sum is f32 either way."""
    if jax.default_backend() != "cpu" or cpu_runs_low_precision_dots():
        return operands
    return tuple(o.astype(jnp.float32) if _low_precision(o) else o for o in operands)


def einsum_f32(subscripts: str, *operands):
    """`jnp.einsum` accumulating in f32 (`preferred_element_type=float32`), on every release."""
    return jnp.einsum(subscripts, *upcast_for_cpu(*operands), preferred_element_type=jnp.float32)


_JAXLIB = tuple(int(p) for p in re.findall(r"\d+", getattr(jax.lib, "__version__", jax.__version__))[:2])
