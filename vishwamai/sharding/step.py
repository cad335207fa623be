"""The sharded train step and what it costs: the jitted grad function and step with the mesh's
shardings, the shard shapes of a tree, and the compiler's memory per device for each layout
(`compiled_train_memory`, `layout_memory`, and `layout_memory_subprocess`, which runs it in a
fresh process with N host devices through `python -m vishwamai.sharding`).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vishwamai import train as _train
from vishwamai.measure import CompiledStats
from vishwamai.sharding.mesh import (LAYOUTS, LOGICAL_AXIS_RULES, _dict_key_names, batch_sharding,
                                     mesh_context, mesh_for_layout, param_shardings,
                                     state_shardings)


def make_sharded_grad_fn(model, mesh, *, batch_size: int, chunk_size: int = _train.DEFAULT_CHUNK,
                         accum_steps: int = 1, rules=LOGICAL_AXIS_RULES):
    """Jitted `grad_fn(params, batch, rng) -> (loss, grads)` with sharded parameters, batch and
    gradients (gradients in the parameters' layout)."""
    model = _train.as_model(model)
    p_sh = param_shardings(model, mesh, rules)
    b_sh = batch_sharding(mesh, batch_size, rules)
    rep = NamedSharding(mesh, P())
    fn = jax.jit(_train.make_grad_fn(model, chunk_size=chunk_size, accum_steps=accum_steps),
                 in_shardings=(p_sh, b_sh, rep), out_shardings=(rep, p_sh))

    def grad_fn(params, batch, rng):
        with mesh_context(mesh, rules):
            return fn(params, jax.device_put(jnp.asarray(batch), b_sh), rng)

    grad_fn.jitted = fn
    return grad_fn


def make_sharded_train_step(model, optimizer, mesh, *, batch_size: int,
                            rules=LOGICAL_AXIS_RULES, **step_kw):
    """`make_train_step` with the state and batch laid out on `mesh` (state donated).

    Returns `step(state, tokens) -> (state, metrics)`; `tokens` may live anywhere (it is put
    in the batch layout first); in a multi-process job pass a global array (`global_batch`). The returned function carries `.state_shardings`,
    `.batch_sharding`, `.jitted` (for `.lower(...)`) and `.model`.
    """
    model = _train.as_model(model, dtype=step_kw.pop("dtype", None),
                             remat=step_kw.pop("remat", None),
                             attention_impl=step_kw.pop("attention_impl", None))
    s_sh = state_shardings(model, optimizer, mesh, rules)
    b_sh = batch_sharding(mesh, batch_size, rules)
    rep = NamedSharding(mesh, P())
    jitted = _train.make_train_step(model, optimizer, in_shardings=(s_sh, b_sh),
                                    out_shardings=(s_sh, rep), **step_kw)

    def step(state, batch):
        if not (isinstance(batch, jax.Array) and batch.sharding == b_sh):  # see global_batch
            batch = jax.device_put(jnp.asarray(batch), b_sh)
        with mesh_context(mesh, rules):
            return jitted(state, batch)

    step.state_shardings, step.batch_sharding, step.jitted = s_sh, b_sh, jitted
    step.model, step.mesh, step.rules = model, mesh, rules
    return step


# ============================================================================================
# what a layout costs per device
# ============================================================================================

def shard_shapes(tree) -> dict:
    """`{'path': (global shape, per-device shard shape)}` of every array in `tree`."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shard = x.sharding.shard_shape(x.shape)
        out["/".join(_dict_key_names(path)) or jax.tree_util.keystr(path)] = (
            tuple(x.shape), tuple(shard))
    return out


def compiled_train_memory(model, optimizer, mesh, *, batch_size: int, seq_len: int,
                          rules=LOGICAL_AXIS_RULES, **step_kw) -> dict:
    """Per-device bytes of the compiled sharded train step (`memory_analysis()`), and the
    per-device bytes of parameters and optimizer state from their shard shapes.

    Nothing is executed: the step is lowered on abstract inputs and compiled.
    """
    step = make_sharded_train_step(model, optimizer, mesh, batch_size=batch_size, rules=rules,
                                   **step_kw)
    abstract = jax.eval_shape(
        functools.partial(_train.create_train_state, step.model, optimizer),
        jax.random.PRNGKey(0))
    state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, step.state_shardings)
    batch_in = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32,
                                    sharding=step.batch_sharding)
    with mesh_context(mesh, rules):
        compiled = step.jitted.lower(state_in, batch_in).compile()
    stats = CompiledStats.of(compiled, hlo=True)

    def local_bytes(tree, shardings):
        return int(sum(np.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
                       for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))

    p_bytes = local_bytes(abstract.params, step.state_shardings.params)
    o_bytes = local_bytes(abstract.opt_state, step.state_shardings.opt_state)
    row = {
        "mesh": dict(mesh.shape),
        "devices": int(mesh.size),
        "param_bytes_per_device": p_bytes,
        "opt_state_bytes_per_device": o_bytes,
    }
    for k, v in (("argument_size_in_bytes", stats.argument_bytes),
                 ("output_size_in_bytes", stats.output_bytes),
                 ("alias_size_in_bytes", stats.alias_bytes),
                 ("temp_size_in_bytes", stats.temp_bytes),
                 ("generated_code_size_in_bytes", stats.code_bytes)):
        row[k] = int(v)
    # Donated state aliases its output: live = arguments + outputs - aliased + temporaries.
    row["peak_bytes_estimate"] = int(stats.peak_bytes)
    row["collectives"] = {k: v["count"] for k, v in stats.collectives.items()}
    row["collective_bytes"] = {k: v["bytes"] for k, v in stats.collectives.items()}
    return row


def layout_memory(cfg, *, layouts: Sequence[str] = LAYOUTS, n_devices: int = 8,
                  batch_size: int = 8, seq_len: int = 128, **step_kw) -> list[dict]:
    """`compiled_train_memory` for each named layout over `n_devices` devices of this process."""
    model = _train.as_model(cfg)
    opt = _train.make_optimizer()
    rows = []
    for layout in layouts:
        mesh = mesh_for_layout(layout, n_devices)
        row = compiled_train_memory(model, opt, mesh, batch_size=batch_size, seq_len=seq_len,
                                    **step_kw)
        rows.append({"layout": layout, "model": model.config.name, "batch_size": batch_size,
                     "seq_len": seq_len, **row})
    return rows


def layout_memory_subprocess(cfg, *, layouts: Sequence[str] = LAYOUTS, n_devices: int = 8,
                             batch_size: int = 8, seq_len: int = 128, timeout: float = 600,
                             **step_kw) -> list[dict]:
    """`layout_memory` in a fresh Python process with `n_devices` simulated CPU devices.

    A JAX process fixes its device count at its first use, so a chapter running where JAX
    already has fewer devices (a one-chip runtime) compiles the multi-device program in a
    child process. `cfg` is a preset name or a `ModelConfig`; the rows come back as JSON.
    """
    from vishwamai.config import ModelConfig
    cfg_json = json.dumps(cfg.to_dict() if isinstance(cfg, ModelConfig) else cfg)
    args = {"cfg": cfg_json, "layouts": list(layouts), "n_devices": n_devices,
            "batch_size": batch_size, "seq_len": seq_len, "step_kw": step_kw}
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={n_devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-m", "vishwamai.sharding", json.dumps(args)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"layout_memory subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main(argv):
    args = json.loads(argv[0])
    cfg = json.loads(args["cfg"])
    if isinstance(cfg, dict):
        from vishwamai.config import ModelConfig
        cfg = ModelConfig.from_dict(cfg)
    rows = layout_memory(cfg, layouts=args["layouts"], n_devices=args["n_devices"],
                         batch_size=args["batch_size"], seq_len=args["seq_len"],
                         **args["step_kw"])
    print(json.dumps(rows))
