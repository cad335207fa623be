"""The independent checks: what the compiler and the real parameter tree say.

Each function builds the real model for a config, compiles it with `jax.jit(...).lower(...)
.compile()` on abstract inputs (nothing is allocated or run) and reads XLA's own accounting:
`cost_analysis()` for FLOPs and `memory_analysis()` for bytes. The analytic functions in
`params`, `flops` and `memory` are tested against these.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vishwamai.analysis.flops import compiled_flops
from vishwamai.analysis.memory import compiled_memory
from vishwamai.analysis.params import _cfg, tree_param_count
from vishwamai.config import ModelConfig


def _model(cfg):
    from vishwamai.model import VishwamAI

    return VishwamAI(_cfg(cfg))


def _tokens(batch, seq_len):
    return jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)


def tree_params(cfg: ModelConfig | str) -> int:
    """Parameters in the real tree (`jax.eval_shape` of `init`: nothing allocated)."""
    return tree_param_count(_model(cfg).abstract_params())


def forward_flops(cfg: ModelConfig | str, *, batch: int, seq_len: int) -> float:
    """The compiler's FLOPs for the logits of `batch` x `seq_len` tokens."""
    m = _model(cfg)
    compiled = jax.jit(m.logits).lower(m.abstract_params(), _tokens(batch, seq_len)).compile()
    return compiled_flops(compiled)


def _grad_fn(m):
    return jax.jit(jax.grad(lambda p, t: m.loss(p, t)))


def train_step(cfg: ModelConfig | str, *, batch: int, seq_len: int, compiler_options=None):
    """Compiled gradient of the loss over `batch` sequences of `seq_len` predicted tokens.

    Returns the compiled object; read it with `compiled_flops` / `compiled_memory`.
    """
    m = _model(cfg)
    lowered = _grad_fn(m).lower(m.abstract_params(), _tokens(batch, seq_len + 1))
    return lowered.compile(compiler_options) if compiler_options else lowered.compile()


def _residual_output_bytes(m, batch, seq_len) -> int:
    def forward_half(p, t):
        return jax.vjp(lambda p: m.loss(p, t), p)[1]  # the residuals the backward pass reads

    compiled = jax.jit(forward_half).lower(m.abstract_params(),
                                           _tokens(batch, seq_len + 1)).compile()
    return compiled_memory(compiled)["output"]


def saved_activations(cfg: ModelConfig | str, *, batch: int, seq_len: int) -> int:
    """The compiler's bytes of activations a training step saves for its backward pass.

    Definition: compile the forward half of the step, `p, t -> jax.vjp(loss, p)[1]`, whose
    outputs are exactly the residuals the backward pass reads (activations, plus the weights
    it needs). `memory_analysis().output_size_in_bytes` at batch 2B minus the same at batch B
    removes the weights (which do not grow with the batch) and leaves the activations of B
    sequences. Independent of XLA's scheduling, so it shows each remat policy's effect on any
    backend.
    """
    m = _model(cfg)
    return (_residual_output_bytes(m, 2 * batch, seq_len)
            - _residual_output_bytes(m, batch, seq_len))


def kv_cache_tree_bytes(cfg: ModelConfig | str, batch: int, max_len: int) -> int:
    """Bytes of the KV cache the model really allocates (`init_cache`, via `eval_shape`)."""
    import math

    m = _model(cfg)
    shapes = jax.eval_shape(lambda: m.init_cache(batch, max_len))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes)
               if x.ndim == 4)
