"""What the parameter tree weighs: each parameter's `PARAM_COMPONENTS` entry (`_component`), the
bytes of N weights per storage format, and the projection kernels as `[K, N]` GEMMs with their
size in fp8 (per-tensor, per-row or per-block scales); and the check that a tree is the model's
(`_check_params_tree`: the same paths and shapes).
"""
from __future__ import annotations

import math

import jax
import numpy as np

from vishwamai import validate
from vishwamai.checkpoint import leaf_path
from vishwamai.kernels.fp8 import quantized_nbytes


def _check_params_tree(name: str, params, abstract, model_name: str) -> None:
    """Raises `InputError` naming `name` unless `params` holds the paths and shapes of
    `abstract` (the model's parameter tree; dtypes and shardings may differ)."""
    def table(tree):
        return {leaf_path(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    want, got = table(abstract), table(params)
    if want == got:
        return
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [k for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    if shapes:
        first = f"{shapes[0]} has shape {list(got[shapes[0]])}, the model's is {list(want[shapes[0]])}"
    elif missing:
        first = f"{len(missing)} of the model's parameters are missing, e.g. {missing[0]}"
    else:
        first = f"it holds {len(extra)} arrays the model has not, e.g. {extra[0]!r}"
    total = sum(math.prod(s) for s in want.values())
    raise validate.InputError(
        f"{name} is not accepted: expected the parameter tree of model {model_name!r} "
        f"({len(want)} arrays, {total:,} parameters); {first}")


_ATTENTION_PARTS = {"query": "attention_q", "key": "attention_k", "value": "attention_v",
                    "out": "attention_o"}


def _component(path) -> str:
    """The `PARAM_COMPONENTS` entry a parameter belongs to, from its path in the tree."""
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[0] == "token_embed":
        return "embedding"
    if keys[0] == "position_embed":
        return "positions"
    if keys[0] == "lm_head":
        return "head"
    if "attention" in keys:
        part = keys[keys.index("attention") + 1]
        if part in _ATTENTION_PARTS:
            return _ATTENTION_PARTS[part]
    if "mlp" in keys:
        return "mlp"
    if any(k.endswith("norm") for k in keys):
        return "norms"
    raise ValueError(f"parameter {'/'.join(keys)} belongs to no known component")


def weight_bytes(num_params: int) -> dict:
    """Bytes to store `num_params` weights in each storage format (scales not included)."""
    return {"float32": 4 * num_params, "bfloat16": 2 * num_params,
            "float8_e4m3fn": num_params, "int8": num_params}


# ---------------------------------------------------------------------------------------------
# the weights in fp8
# ---------------------------------------------------------------------------------------------

def matmul_weight_shapes(params, param_axes) -> dict:
    """The `[K, N]` GEMM view of every projection kernel in a parameter tree.

    A kernel whose last logical axis is ``'embed'`` writes back into the residual stream, so all
    its other axes are contracted (`[N, H, D] -> [N*H, D]`); any other kernel contracts its first
    axis (`[D, N, H] -> [D, N*H]`). That is how `vishwamai.layers.linear` reshapes them for
    `fp8_gemm_optimized`.

    Args:
      params: a parameter tree (arrays or `jax.ShapeDtypeStruct`s, e.g. `abstract_params()`).
      param_axes: the matching tree of logical-axis `PartitionSpec`s (`param_axes()`).

    Returns:
      `{path: (K, N)}` for the leaves named ``kernel``.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    axes = jax.tree_util.tree_leaves(
        param_axes, is_leaf=lambda x: isinstance(x, (tuple, jax.sharding.PartitionSpec)))
    if len(axes) != len(leaves):
        raise ValueError(f"param_axes has {len(axes)} leaves, params {len(leaves)}")
    out = {}
    for (path, leaf), names in zip(leaves, axes):
        if getattr(path[-1], "key", None) != "kernel":
            continue
        shape = tuple(leaf.shape)
        if tuple(names)[-1] == "embed":
            out[jax.tree_util.keystr(path)] = (math.prod(shape[:-1]), shape[-1])
        else:
            out[jax.tree_util.keystr(path)] = (shape[0], math.prod(shape[1:]))
    return out


def fp8_weight_bytes(params, param_axes, scaling="tensor", *, block_size=128) -> dict:
    """Bytes of a model's weights with the projection kernels stored in fp8 and the rest in bf16.

    Returns:
      `{'matmul_params', 'other_params', 'fp8_data', 'fp8_scales', 'other_bf16', 'total'}`:
      parameter counts and bytes (scales f32, tiled as `quantized_nbytes` describes).
    """
    shapes = matmul_weight_shapes(params, param_axes)
    per = [quantized_nbytes(s, scaling, block_size=block_size) for s in shapes.values()]
    n_all = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    n_mm = sum(k * n for k, n in shapes.values())
    data = sum(p["data"] for p in per)
    scales = sum(p["scales"] for p in per)
    other = 2 * (n_all - n_mm)
    return {"matmul_params": n_mm, "other_params": n_all - n_mm, "fp8_data": data,
            "fp8_scales": scales, "other_bf16": other, "total": data + scales + other}
