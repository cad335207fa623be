"""Weight-only int8 / fp8 serving: a trained parameter tree quantized once, the bytes a decode
step reads with it, and what the compiler makes of the quantized decode step.

`quantize(model, params, 'int8')` returns the model with `weight_quant='int8'` and its tree: every
projection kernel (attention q/k/v/o, the MLP, the untied output head) becomes a 1-byte array with
an f32 `kernel_scale` per output channel (`vishwamai.kernels.quant`); embeddings, norms and biases
stay as they were (a decode step reads B rows of the embedding table, not all of it; a tied head
keeps the table in its float dtype). The quantized model's `logits`, `decode_step` and `generate`
are the float model's with every such matmul through `quantized_matmul`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vishwamai import validate
from vishwamai.kernels.quant import (STORAGE_DTYPES, contracted_axes, dequantize_weight,
                                     quantize_weight)
from vishwamai.measure import CompiledStats
from vishwamai.model import VishwamAI
from vishwamai.model.weights import _check_params_tree

SCALE = "kernel_scale"


def _check_model(name: str, model) -> VishwamAI:
    if not isinstance(model, VishwamAI):
        validate.fail(name, model, "a vishwamai.model.VishwamAI", type_error=True)
    return model


def quantize(model: VishwamAI, params, mode: str = "int8"):
    """Quantizes a float model's projection kernels once, per output channel.

    Args:
      model: the float `VishwamAI` (`weight_quant='none'`, a dense config).
      params: its parameter tree (e.g. a trained or restored one).
      mode: 'int8' (symmetric, [-127, 127]) or 'fp8' (e4m3fn; emulated on CPU).
    Returns:
      `(qmodel, qparams)`: the model with `weight_quant=mode` and its tree (kernels 1 byte,
      `kernel_scale` f32 beside each).
    Raises:
      InputError: an unknown mode, a model already quantized or with experts (their weights are
        not `Linear` kernels), or params that are not the model's tree.
    """
    _check_model("model", model)
    mode = validate.one_of("mode", mode, tuple(STORAGE_DTYPES))
    cfg = model.config
    if cfg.weight_quant != "none":
        raise validate.InputError(f"model is already quantized (weight_quant="
                                  f"{cfg.weight_quant!r}); quantize takes a float model "
                                  f"(weight_quant='none')")
    if cfg.num_experts:
        raise validate.InputError(f"model has num_experts={cfg.num_experts}: weight-only "
                                  f"quantization covers dense models (experts' weights are not "
                                  f"Linear kernels); accepted: num_experts=0")
    if cfg.use_fp8:
        raise validate.InputError("model has use_fp8=True (the fp8 training GEMM); quantize a "
                                  "model with use_fp8=False")
    _check_params_tree("params", params, model.abstract_params(), cfg.name)
    qmodel = VishwamAI(cfg.replace(weight_quant=mode))
    target = traverse_util.flatten_dict(qmodel.abstract_params())
    src = traverse_util.flatten_dict(params)
    out = {}
    for path, want in target.items():
        if path[-1] == SCALE:
            continue
        leaf = src[path]
        if path[-1] == "kernel" and want.dtype == STORAGE_DTYPES[mode]:
            scale_shape = target[path[:-1] + (SCALE,)].shape
            q, s = quantize_weight(leaf, contracted_axes(leaf.shape, scale_shape), mode)
            out[path], out[path[:-1] + (SCALE,)] = q, s
        else:
            out[path] = leaf
    return qmodel, traverse_util.unflatten_dict(out)


def dequantize(qmodel: VishwamAI, qparams, dtype=jnp.float32):
    """The float model and tree a quantized pair stands for (`q * scale` per kernel)."""
    _check_model("qmodel", qmodel)
    if qmodel.config.weight_quant == "none":
        raise validate.InputError("qmodel is not quantized (weight_quant='none'); accepted: a "
                                  "model returned by quantize")
    _check_params_tree("qparams", qparams, qmodel.abstract_params(), qmodel.config.name)
    flat = traverse_util.flatten_dict(qparams)
    out = {}
    for path, leaf in flat.items():
        if path[-1] == SCALE:
            continue
        scale = flat.get(path[:-1] + (SCALE,)) if path[-1] == "kernel" else None
        out[path] = leaf if scale is None else dequantize_weight(leaf, scale, dtype)
    return VishwamAI(qmodel.config.replace(weight_quant="none")), traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------------------------------------
# bytes a decode step reads
# ---------------------------------------------------------------------------------------------

def decode_weight_bytes(model: VishwamAI, *, batch: int = 1) -> dict:
    """Parameter bytes one decode step reads, from the model's real (abstract) tree.

    Every leaf is read whole once, except an untied token embedding (and learned positions), of
    which only the `batch` rows looked up are read. Returns `{'kernels', 'scales', 'other',
    'total', 'stored'}` (stored: the whole tree's bytes, what sits in memory).
    """
    _check_model("model", model)
    validate.positive_int("batch", batch)
    cfg = model.config
    parts = {"kernels": 0, "scales": 0, "other": 0, "stored": 0}
    for path, leaf in traverse_util.flatten_dict(model.abstract_params()).items():
        nbytes = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
        parts["stored"] += nbytes
        if path[0] in ("token_embed", "position_embed") and not (
                path[0] == "token_embed" and cfg.tie_embeddings):
            parts["other"] += batch * leaf.shape[-1] * jnp.dtype(leaf.dtype).itemsize
        elif path[-1] == "kernel":
            parts["kernels"] += nbytes
        elif path[-1] == SCALE:
            parts["scales"] += nbytes
        else:
            parts["other"] += nbytes
    parts["total"] = parts["kernels"] + parts["scales"] + parts["other"]
    return parts


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def compiled_decode_step(model: VishwamAI, *, batch: int, cache_len: int, target: str = "cpu"):
    """The compiled one-token decode step (`decode_step` on a `cache_len` cache) and its stats.

    Args:
      target: 'cpu' (this host's XLA) or 'tpu:<generation>' (XLA:TPU ahead of time on one chip,
        e.g. 'tpu:v5e'; needs libtpu, nothing runs).
    Returns:
      `(compiled, CompiledStats)`; nothing is allocated (abstract inputs).
    """
    _check_model("model", model)
    validate.positive_int("batch", batch)
    validate.positive_int("cache_len", cache_len)
    params = _abstract(model.abstract_params())
    cache = jax.eval_shape(lambda: model.init_cache(batch, cache_len))
    tok = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    fn = jax.jit(lambda p, c, t: model.decode_step(p, c, t))  # a fresh trace per target
    if target == "cpu":
        compiled = fn.lower(params, cache, tok).compile()
    elif isinstance(target, str) and target.startswith("tpu:"):
        from vishwamai.kernels.target import compile_target
        from vishwamai.aot.topology import GENERATIONS, _one_chip, require_libtpu
        gen = validate.one_of("target generation", target[4:], tuple(GENERATIONS))
        require_libtpu()
        rep = _one_chip(gen)
        put = lambda t: jax.tree.map(  # noqa: E731
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), t)
        with compile_target("tpu"):
            compiled = jax.jit(lambda p, c, t: model.decode_step(p, c, t), out_shardings=rep).lower(
                put(params), put(cache), put(tok)).compile()
    else:
        validate.fail("target", target, "'cpu' or 'tpu:<generation>' (e.g. 'tpu:v5e')")
    return compiled, CompiledStats.of(compiled)


def largest_f32_weight_convert(hlo_text: str, min_elements: int) -> int:
    """Elements of the largest f32 `convert` result in a compiled HLO of at least
    `min_elements` (0 if none): a whole dequantized kernel written to memory shows here."""
    import re
    best = 0
    for m in re.finditer(r"= f32\[([\d,]*)\]\{[^}]*\} convert\(", hlo_text):
        n = math.prod(int(d) for d in m.group(1).split(",") if d)
        if n >= min_elements:
            best = max(best, n)
    return best
