"""The independent checks of `vishwamai.analysis`: what the compiler and the real tree say.

Each function builds the real model for a config, compiles it with `jax.jit(...).lower(...)
.compile()` on abstract inputs (nothing is allocated or run) and reads XLA's own accounting:
`cost_analysis()` for FLOPs and `memory_analysis()` for bytes. The analytic functions in
`params`, `flops` and `memory` are tested against these.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vishwamai.analysis.params import tree_param_count
from vishwamai.config import ModelConfig, as_config
from vishwamai.measure import compiled_flops, compiled_memory
from vishwamai.model import VishwamAI
from vishwamai.train import chunked_cross_entropy, head_weight


def _model(cfg):
    return VishwamAI(as_config(cfg))


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


def _forward_half(m):
    def forward_half(p, t):
        return jax.vjp(lambda p: m.loss(p, t), p)[1]  # the residuals the backward pass reads

    return forward_half


def saved_activations(cfg: ModelConfig | str, *, batch: int, seq_len: int) -> int:
    """The compiler's bytes of activations a training step saves for its backward pass.

    Definition: compile the forward half of the step, `p, t -> jax.vjp(loss, p)[1]`, whose
    outputs are exactly the residuals the backward pass reads: the activations, plus the
    weights it needs. `memory_analysis().output_size_in_bytes` counts them all; the weights
    are the outputs whose shape does not change with the batch (found by tracing the same
    function at batch 2B with `jax.eval_shape`, nothing compiled or allocated), and their bytes
    are subtracted. Independent of XLA's scheduling, so it shows each remat policy's effect on
    any backend.
    """
    m = _model(cfg)
    fn = _forward_half(m)
    params = m.abstract_params()
    compiled = jax.jit(fn).lower(params, _tokens(batch, seq_len + 1)).compile()
    total = compiled_memory(compiled)["output"]
    at_b = jax.tree.leaves(jax.eval_shape(fn, params, _tokens(batch, seq_len + 1)))
    at_2b = jax.tree.leaves(jax.eval_shape(fn, params, _tokens(2 * batch, seq_len + 1)))
    if len(at_b) != len(at_2b):
        raise RuntimeError("the residual structure changed with the batch size")
    fixed = sum(math.prod(a.shape) * a.dtype.itemsize for a, b in zip(at_b, at_2b)
                if a.shape == b.shape)
    return total - fixed


def kv_cache_tree_bytes(cfg: ModelConfig | str, batch: int, max_len: int) -> int:
    """Bytes of the KV cache the model really allocates (`init_cache`, via `eval_shape`)."""
    m = _model(cfg)
    shapes = jax.eval_shape(lambda: m.init_cache(batch, max_len))
    # Selected by name: a scanned model stacks the [B, S, K, H] buffers into [L, B, S, K, H].
    return sum(math.prod(x.shape) * x.dtype.itemsize
               for path, x in jax.tree_util.tree_leaves_with_path(shapes)
               if getattr(path[-1], "key", None) in ("cached_key", "cached_value"))


def loss_step(cfg: ModelConfig | str, *, batch: int, seq_len: int, loss: str = "full",
              chunk_size: int = 128, compiler_options=None):
    """Compiled gradient of the next-token loss with full logits or the chunked loss.

    'full': `VishwamAI.loss` (builds the [B, T, V] f32 log-probabilities). 'chunked':
    `vishwamai.train.chunked_cross_entropy` on the hidden states (one [B, chunk, V] block of
    logits at a time). Read the result with `compiled_memory`.
    """
    m = _model(cfg)
    c = m.config
    if loss == "full":
        fn = lambda p, t: m.loss(p, t)  # noqa: E731
    elif loss == "chunked":
        def fn(p, t):
            h = m.hidden(p, t[:, :-1])
            return chunked_cross_entropy(h, head_weight(p, c), t[:, 1:], chunk_size=chunk_size)
    else:
        raise ValueError(f"loss={loss!r} is not one of ('full', 'chunked')")
    lowered = jax.jit(jax.grad(fn)).lower(m.abstract_params(), _tokens(batch, seq_len + 1))
    return lowered.compile(compiler_options) if compiler_options else lowered.compile()
