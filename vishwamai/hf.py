"""Hugging Face checkpoints in and out: safetensors state dicts <-> this package's parameter tree.

The name map, per family (shape letters as everywhere: V D N K H F L; `i` a layer):

  Llama / Mistral / Qwen2 (torch `nn.Linear` weights are `[out, in]`)
    model.embed_tokens.weight [V, D]              -> token_embed/embedding [V, D]
    model.layers.i.self_attn.q_proj.weight [N*H, D] -> layer_i/attention/query/kernel [D, N, H]
      (k_proj, v_proj: [K*H, D] -> key, value [D, K, H]; biases [N*H] -> [N, H] when present)
    model.layers.i.self_attn.o_proj.weight [D, N*H] -> layer_i/attention/out/kernel [N, H, D]
    model.layers.i.mlp.{gate,up}_proj.weight [F, D] -> layer_i/mlp/wi/kernel [D, 2, F]
      (gate at index 0, up at index 1: `act(x @ wi[:, 0]) * (x @ wi[:, 1])`)
    model.layers.i.mlp.down_proj.weight [D, F]    -> layer_i/mlp/wo/kernel [F, D]
    model.layers.i.{input,post_attention}_layernorm.weight -> layer_i/pre_{attention,mlp}_norm/scale
    model.norm.weight                              -> final_norm/scale
    lm_head.weight [V, D]                          -> lm_head/kernel [D, V] (absent when tied)

  GPT-2 (`Conv1D` weights are `[in, out]`; GPT2LMHeadModel's `transformer.` prefix or none)
    wte.weight [V, D], wpe.weight [P, D]           -> token_embed, position_embed /embedding
    h.i.attn.c_attn.weight [D, 3*N*H] (q | k | v)  -> query, key, value kernels [D, N, H]
    h.i.attn.c_attn.bias [3*N*H]                   -> their biases [N, H]
    h.i.attn.c_proj.{weight [N*H, D], bias [D]}    -> out/{kernel [N, H, D], bias}
    h.i.mlp.c_fc.{weight [D, F], bias [F]}         -> mlp/wi/{kernel, bias}
    h.i.mlp.c_proj.{weight [F, D], bias [D]}       -> mlp/wo/{kernel, bias}
    h.i.ln_1, h.i.ln_2, ln_f .{weight, bias}       -> pre_attention_norm, pre_mlp_norm, final_norm
                                                      /{scale, bias}

RoPE needs no permutation: transformers' Llama-family checkpoints already use the rotate-half
layout that `vishwamai.layers.rope` implements (Meta's original interleaved weights are permuted
by transformers' conversion script).

Reading streams one tensor at a time (`safetensors.safe_open`): each is checked for shape, converted
in numpy, cast to the storage dtype and placed (with its sharding when one is given) before the
next is read, so host memory holds a few copies of one tensor beyond the result. This module imports only
the config, numpy, jax and safetensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from vishwamai.config import DTYPES, ModelConfig
from vishwamai.hf_moe import expert_layout, moe_rules, qk_norm_rules

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
# Buffers some checkpoints carry that are not parameters (causal-mask and RoPE caches).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One group of Hugging Face tensors <-> one group of our parameters."""

    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    ours: tuple[tuple[str, ...], ...]
    to_ours: Callable[[list], list]
    to_hf: Callable[[list], list]


def _identity(hf, shape, ours):
    return _Rule((hf,), (tuple(shape),), (ours,), lambda xs: xs, lambda xs: xs)


def _linear(hf, out_in, ours, kernel_shape):
    """torch Linear `[out, in]` <-> our kernel `[in, *out]` (or `[*in, out]`)."""
    return _Rule((hf,), (tuple(out_in),), (ours,),
                 lambda xs: [xs[0].T.reshape(kernel_shape)],
                 lambda xs: [xs[0].reshape(out_in[1], out_in[0]).T])


def _reshaped(hf, shape, ours, our_shape):
    return _Rule((hf,), (tuple(shape),), (ours,),
                 lambda xs: [xs[0].reshape(our_shape)], lambda xs: [xs[0].reshape(shape)])


def family(cfg: ModelConfig, model_type: str | None = None) -> str:
    """The Hugging Face model_type the checkpoint is written as (checks the config fits it)."""
    return cfg.to_hf(model_type)["model_type"]


def _rules(cfg: ModelConfig, model_type: str, prefix: str, layout: str = "fused") -> list[_Rule]:
    """Every tensor of the family; `layout` is how MoE experts are stored (`hf_moe.LAYOUTS`)."""
    V, L, D, N, K, H, F = (cfg.vocab_size, cfg.num_layers, cfg.hidden_dim, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim)
    rules = []
    if model_type == "gpt2":
        p = prefix
        rules.append(_identity(p + "wte.weight", (V, D), ("token_embed", "embedding")))
        rules.append(_identity(p + "wpe.weight", (cfg.max_seq_len, D),
                               ("position_embed", "embedding")))
        for i in range(L):
            h, layer = f"{p}h.{i}.", f"layer_{i}"
            att = (layer, "attention")
            qkv = [att + (n, "kernel") for n in ("query", "key", "value")]
            qkv_b = [att + (n, "bias") for n in ("query", "key", "value")]
            rules.append(_Rule(
                (h + "attn.c_attn.weight",), ((D, 3 * D),), tuple(qkv),
                lambda xs: [w.reshape(D, N, H) for w in np.split(xs[0], 3, axis=1)],
                lambda xs: [np.concatenate([w.reshape(D, N * H) for w in xs], axis=1)]))
            rules.append(_Rule(
                (h + "attn.c_attn.bias",), ((3 * D,),), tuple(qkv_b),
                lambda xs: [b.reshape(N, H) for b in np.split(xs[0], 3)],
                lambda xs: [np.concatenate([b.reshape(N * H) for b in xs])]))
            rules.append(_reshaped(h + "attn.c_proj.weight", (N * H, D), att + ("out", "kernel"),
                                   (N, H, D)))
            rules.append(_identity(h + "attn.c_proj.bias", (D,), att + ("out", "bias")))
            for hf_name, ours, shape in (("mlp.c_fc", "wi", (D, F)), ("mlp.c_proj", "wo", (F, D))):
                rules.append(_identity(h + hf_name + ".weight", shape, (layer, "mlp", ours, "kernel")))
                rules.append(_identity(h + hf_name + ".bias", shape[1:], (layer, "mlp", ours, "bias")))
            for hf_name, ours in (("ln_1", "pre_attention_norm"), ("ln_2", "pre_mlp_norm")):
                rules.append(_identity(h + hf_name + ".weight", (D,), (layer, ours, "scale")))
                rules.append(_identity(h + hf_name + ".bias", (D,), (layer, ours, "bias")))
        rules.append(_identity(p + "ln_f.weight", (D,), ("final_norm", "scale")))
        rules.append(_identity(p + "ln_f.bias", (D,), ("final_norm", "bias")))
        if not cfg.tie_embeddings:
            rules.append(_linear("lm_head.weight", (V, D), ("lm_head", "kernel"), (D, V)))
        return rules

    p = prefix
    rules.append(_identity(p + "embed_tokens.weight", (V, D), ("token_embed", "embedding")))
    for i in range(L):
        h, layer = f"{p}layers.{i}.", f"layer_{i}"
        att = (layer, "attention")
        for proj, ours, heads in (("q_proj", "query", N), ("k_proj", "key", K),
                                  ("v_proj", "value", K)):
            rules.append(_linear(h + f"self_attn.{proj}.weight", (heads * H, D),
                                 att + (ours, "kernel"), (D, heads, H)))
            if cfg.attention_qkv_bias:
                rules.append(_reshaped(h + f"self_attn.{proj}.bias", (heads * H,),
                                       att + (ours, "bias"), (heads, H)))
        rules.append(_linear(h + "self_attn.o_proj.weight", (D, N * H), att + ("out", "kernel"),
                             (N, H, D)))
        if cfg.use_bias:
            rules.append(_identity(h + "self_attn.o_proj.bias", (D,), att + ("out", "bias")))
        rules += [_Rule(*r) for r in qk_norm_rules(cfg, h, layer)]
        if cfg.num_experts and i >= cfg.first_dense_layers:
            rules += [_Rule(*r) for r in moe_rules(cfg, model_type, h, layer, layout)]
        else:
            rules += _dense_mlp_rules(cfg, h, layer)
        rules.append(_identity(h + "input_layernorm.weight", (D,),
                               (layer, "pre_attention_norm", "scale")))
        rules.append(_identity(h + "post_attention_layernorm.weight", (D,),
                               (layer, "pre_mlp_norm", "scale")))
    rules.append(_identity(p + "norm.weight", (D,), ("final_norm", "scale")))
    if not cfg.tie_embeddings:
        rules.append(_linear("lm_head.weight", (V, D), ("lm_head", "kernel"), (D, V)))
    return rules


def _dense_mlp_rules(cfg: ModelConfig, h: str, layer: str) -> list[_Rule]:
    """The gated dense MLP of one Llama-family block (+ biases when the config has them)."""
    D, F = cfg.hidden_dim, cfg.mlp_dim
    rules = []
    mlp = (layer, "mlp")
    rules.append(_Rule(
        (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), ((F, D), (F, D)),
        (mlp + ("wi", "kernel"),),
        lambda xs: [np.stack([xs[0].T, xs[1].T], axis=1)],
        lambda xs: [xs[0][:, 0, :].T, xs[0][:, 1, :].T]))
    rules.append(_linear(h + "mlp.down_proj.weight", (D, F), mlp + ("wo", "kernel"), (F, D)))
    if cfg.use_bias:
        rules.append(_Rule(
            (h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"), ((F,), (F,)),
            (mlp + ("wi", "bias"),),
            lambda xs: [np.stack(xs, axis=0)], lambda xs: [xs[0][0], xs[0][1]]))
        rules.append(_identity(h + "mlp.down_proj.bias", (D,), mlp + ("wo", "bias")))
    return rules


# ------------------------------------------------------------------------------ reading

def safetensors_files(path: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint directory (sharded index first), or `[path]`."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"no checkpoint at path={path!r}")
    index = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, Mapping):
            raise ValueError(f"{index} has no 'weight_map'")
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors file in path={path!r}")
    return files


def _tensor_files(handles: Mapping[str, Any]) -> dict[str, str]:
    where = {}
    for file, handle in handles.items():
        for name in handle.keys():
            if name in where:
                raise ValueError(f"tensor {name!r} is in two files: {where[name]} and {file}")
            where[name] = file
    return where


def _prefix(names, model_type) -> str:
    probe = "wte.weight" if model_type == "gpt2" else "embed_tokens.weight"
    outer = "transformer." if model_type == "gpt2" else "model."
    return outer if outer + probe in names or probe not in names else ""


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _placer(shardings):
    if shardings is None:
        return lambda path, x: jax.device_put(x)
    if isinstance(shardings, jax.sharding.Sharding):
        return lambda path, x: jax.device_put(x, shardings)
    if isinstance(shardings, Mapping):
        def place(path, x):
            try:
                sharding = _get(shardings, path)
            except (KeyError, TypeError):
                raise ValueError(f"shardings has no entry for parameter {'/'.join(path)}") from None
            return jax.device_put(x, sharding)
        return place
    raise ValueError("shardings must be None, a jax.sharding.Sharding, or a tree of them shaped "
                     f"like the parameters; got {type(shardings).__name__}")


def load_state_dict(cfg: ModelConfig, files: str | os.PathLike | Sequence[str], *,
                    model_type: str | None = None, param_dtype: str | None = None,
                    shardings=None) -> dict:
    """Reads a Hugging Face safetensors checkpoint into this package's parameter tree.

    Args:
      cfg: the model's config (`ModelConfig.from_hf` of the checkpoint's config.json).
      files: a checkpoint directory, one safetensors file, or a list of them.
      model_type: the checkpoint's family; None: the one `cfg.to_hf()` picks.
      param_dtype: storage dtype of the result (default `cfg.param_dtype`); each tensor is cast
        as it is read.
      shardings: None, one `jax.sharding.Sharding` for every parameter, or a tree of them shaped
        like the parameters (e.g. `vishwamai.sharding.param_shardings(model, mesh)`).
    Returns:
      The parameter tree (nested dicts of jax arrays).
    Raises:
      ValueError naming the first missing, unexpected or mis-shaped tensor and its file.
    """
    from safetensors import safe_open

    model_type = family(cfg, model_type)
    if param_dtype is not None and param_dtype not in DTYPES:
        raise ValueError(f"param_dtype={param_dtype!r} is not one of {tuple(DTYPES)}")
    dtype = DTYPES[param_dtype or cfg.param_dtype]
    paths = safetensors_files(files) if isinstance(files, (str, os.PathLike)) else list(files)
    place = _placer(shardings)
    params: dict = {}
    with contextlib.ExitStack() as stack:
        handles = {}
        for file in paths:
            if not os.path.isfile(file):
                raise ValueError(f"checkpoint file {file} does not exist")
            handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
        where = _tensor_files(handles)
        rules = _rules(cfg, model_type, _prefix(where, model_type), expert_layout(where))
        expected = {name for r in rules for name in r.hf}
        for r in rules:
            for name in r.hf:
                if name not in where:
                    raise ValueError(f"checkpoint is missing tensor {name!r} (a {model_type} "
                                     f"model with {cfg.num_layers} layers; files: {paths})")
        tied_extra = {"lm_head.weight"} if cfg.tie_embeddings else set()
        for name, file in where.items():
            if (name not in expected and name not in tied_extra
                    and not name.endswith(IGNORED_SUFFIXES)):
                raise ValueError(f"unexpected tensor {name!r} in {file}: no parameter of a "
                                 f"{model_type} model with {cfg.num_layers} layers maps to it")
        for r in rules:
            tensors = []
            for name, shape in zip(r.hf, r.hf_shapes):
                handle = handles[where[name]]
                got = tuple(handle.get_slice(name).get_shape())
                if got != shape:
                    raise ValueError(f"tensor {name!r} in {where[name]} has shape {list(got)}; "
                                     f"the config expects {list(shape)}")
                tensors.append(handle.get_tensor(name))
            for path, value in zip(r.ours, r.to_ours(tensors)):
                _set(params, path, place(path, np.ascontiguousarray(value.astype(dtype))))
            del tensors
    return params


# ------------------------------------------------------------------------------ writing

def to_hf_state_dict(cfg: ModelConfig, params, *, model_type: str | None = None,
                     expert_layout: str = "per_expert") -> dict:
    """This package's parameters as a Hugging Face state dict of numpy arrays.

    The names are those transformers' `save_pretrained` writes for the family's `*ForCausalLM`
    class (a tied head is not written); dtypes are the parameters' own. MoE experts are written
    one by one (`expert_layout='per_expert'`, what transformers 5.x `save_pretrained` writes
    and the published checkpoints hold) or as transformers' in-memory fused tensors ('fused').
    """
    model_type = family(cfg, model_type)
    prefix = "transformer." if model_type == "gpt2" else "model."
    out = {}
    for r in _rules(cfg, model_type, prefix, expert_layout):
        try:
            ours = [np.asarray(_get(params, path)) for path in r.ours]
        except (KeyError, TypeError):
            missing = next(p for p in r.ours if not _has(params, p))
            raise ValueError(f"params has no {'/'.join(missing)}") from None
        for name, shape, value in zip(r.hf, r.hf_shapes, r.to_hf(ours)):
            if value.shape != shape:
                raise ValueError(f"parameter for {name!r} has shape {list(value.shape)}; "
                                 f"expected {list(shape)}")
            out[name] = np.ascontiguousarray(value)
    return out


def _has(tree, path) -> bool:
    try:
        _get(tree, path)
        return True
    except (KeyError, TypeError):
        return False


def save_pretrained(directory: str | os.PathLike, cfg: ModelConfig, params, *,
                    model_type: str | None = None, max_shard_bytes: int | None = None,
                    expert_layout: str = "per_expert") -> list[str]:
    """Writes `config.json` and the weights as transformers' `from_pretrained` reads them.

    Args:
      directory: created if missing.
      model_type: the family to write ('gpt2', 'llama', 'mistral', 'qwen2'; None: inferred).
      max_shard_bytes: None writes one `model.safetensors`; else shards of at most this many
        bytes (one tensor may exceed it) plus `model.safetensors.index.json`.
      expert_layout: how MoE experts are written (see `to_hf_state_dict`).
    Returns:
      The paths of the files written.
    """
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    hf_config = cfg.to_hf(model_type)
    state = to_hf_state_dict(cfg, params, model_type=hf_config["model_type"],
                             expert_layout=expert_layout)
    written = [os.path.join(directory, "config.json")]
    with open(written[0], "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        written.append(os.path.join(directory, SAFETENSORS_FILE))
        save_file(state, written[-1], metadata=metadata)
        return written
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive int or None; got {max_shard_bytes!r}")
    shards, size = [[]], 0
    for name, value in state.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += value.nbytes
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in names}, os.path.join(directory, file), metadata=metadata)
        written.append(os.path.join(directory, file))
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
             "weight_map": weight_map}
    written.append(os.path.join(directory, SAFETENSORS_INDEX))
    with open(written[-1], "w") as f:
        json.dump(index, f, indent=2)
    return written
