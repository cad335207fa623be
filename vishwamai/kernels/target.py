"""The backend the kernels are traced for: JAX's default backend, or a compile target.

Kernels choose their implementation while they are traced (`attention(..., 'auto')` picks the
splash kernel on a TPU, the fp8 GEMM picks bf16 block products on an accelerator). Traced in a
CPU process for a TPU topology (`vishwamai.aot`), they must choose for the TPU the program is
compiled for, not for the CPU that compiles it. `compile_target('tpu')` says so for the code
traced inside it; outside it `backend()` is `jax.default_backend()`.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

PLATFORMS = ("cpu", "gpu", "tpu")
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("vishwamai_compile_target",
                                                                    default=None)


def backend() -> str:
    """The platform kernels trace for: the active `compile_target`, else JAX's default."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compile_target(platform: str):
    """Kernels traced inside this context choose as if running on `platform`.

    Args:
      platform: 'cpu', 'gpu' or 'tpu'.

    Raises:
      ValueError: another platform name.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"compile_target platform={platform!r} is not one of {PLATFORMS}")
    token = _TARGET.set(platform)
    try:
        yield platform
    finally:
        _TARGET.reset(token)
