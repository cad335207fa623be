"""The one projection layer: every matmul with a weight goes through here (and fp8 with it)."""
from __future__ import annotations

from math import prod
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vishwamai.kernels.fp8 import fp8_gemm_optimized
from vishwamai.kernels.quant import STORAGE_DTYPES, quantize_weight, quantized_matmul


class Linear(nn.Module):
    """Contracts the last `in_axes` axes of x with a kernel `[*in_shape, *features]`.

    Attributes:
      features: output shape, e.g. `(N, H)` for a query projection.
      kernel_axes: logical axis names of the kernel, one per kernel dimension.
      in_axes: how many trailing axes of x are contracted (2 for `[.., N, H] -> D`).
      use_fp8: route the matmul through `fp8_gemm_optimized` (e4m3 forward, e5m2 gradients).
      init_scale: variance of the fan-in initialiser (1.0: unit-variance outputs).
      weight_quant: 'int8' / 'fp8': the kernel is stored in 1 byte with an f32 `kernel_scale`
        per output channel (`vishwamai.kernels.quant`; made from a trained tree by
        `vishwamai.quant.quantize`) and the matmul is `quantized_matmul`.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    in_axes: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    use_fp8: bool = False
    fp8_scaling: str = "tensor"
    init_scale: float = 1.0
    weight_quant: str = "none"

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features)
        in_shape = tuple(x.shape[x.ndim - self.in_axes:])
        shape = in_shape + features
        if len(self.kernel_axes) != len(shape):
            raise ValueError(f"kernel_axes {self.kernel_axes} must name {len(shape)} dims of {shape}")
        init = nn.initializers.variance_scaling(
            self.init_scale, "fan_in", "truncated_normal", in_axis=tuple(range(self.in_axes)),
            out_axis=tuple(range(self.in_axes, len(shape))))
        batch_shape = x.shape[: x.ndim - self.in_axes]
        if self.weight_quant != "none":
            y = self._quantized(x, init, shape, in_shape, features, batch_shape)
        else:
            y = self._float(x, init, shape, in_shape, features, batch_shape)
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes[self.in_axes:])
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                              features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

    def _quantized(self, x, init, shape, in_shape, features, batch_shape):
        """The 1-byte kernel and its `[1, .., 1, *features]` scale; a fresh init quantizes the
        float initialiser's draw (so `init` of a quantized config gives a usable model)."""
        store = STORAGE_DTYPES[self.weight_quant]
        scale_shape = (1,) * self.in_axes + features
        drawn = None
        if self.is_initializing():
            drawn = quantize_weight(init(self.make_rng("params"), shape, jnp.float32),
                                    tuple(range(self.in_axes)), self.weight_quant)

        def fill(i, s, d):
            return lambda *_: drawn[i] if drawn is not None else jnp.zeros(s, d)

        q = self.param("kernel", nn.with_logical_partitioning(fill(0, shape, store),
                                                              self.kernel_axes))
        scale_axes = (None,) * self.in_axes + tuple(self.kernel_axes[self.in_axes:])
        scale = self.param("kernel_scale", nn.with_logical_partitioning(
            fill(1, scale_shape, jnp.float32), scale_axes))
        y = quantized_matmul(x.reshape(-1, prod(in_shape)),
                             q.reshape(prod(in_shape), prod(features)),
                             scale.reshape(prod(features)), out_dtype=self.dtype)
        return y.reshape(*batch_shape, *features)

    def _float(self, x, init, shape, in_shape, features, batch_shape):
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                            shape, self.param_dtype)
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        if self.use_fp8:
            y = fp8_gemm_optimized(x.reshape(*batch_shape, prod(in_shape)),
                                   kernel.reshape(prod(in_shape), prod(features)),
                                   scaling=self.fp8_scaling, out_dtype=self.dtype)
            y = y.reshape(*batch_shape, *features)
        else:
            contract_x = tuple(range(x.ndim - self.in_axes, x.ndim))
            y = jax.lax.dot_general(x, kernel, ((contract_x, tuple(range(self.in_axes))), ((), ())))
        return y


def linear_for(cfg, features, kernel_axes, *, in_axes: int = 1, name: str | None = None,
               use_bias: bool | None = None, init_scale: float = 1.0,
               use_fp8: bool | None = None) -> Linear:
    """A `Linear` with the config's dtypes, bias and fp8 switches (each overridable)."""
    return Linear(features=tuple(features), kernel_axes=tuple(kernel_axes), in_axes=in_axes,
                  use_bias=cfg.use_bias if use_bias is None else use_bias,
                  dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                  use_fp8=cfg.use_fp8 if use_fp8 is None else use_fp8,
                  fp8_scaling=cfg.fp8_scaling, init_scale=init_scale,
                  weight_quant=cfg.weight_quant, name=name)
