"""Sharding on a device mesh: named mesh axes, logical-axis rules, sharded init and train step.

Every parameter carries logical axis names (vocab, embed, heads, kv_heads, head_dim, mlp, norm,
position) and the residual stream is constrained to (activation_batch, activation_length,
activation_embed). One rule table maps those names onto a three-axis mesh
`('data', 'fsdp', 'tensor')`; a *layout* is the shape of that mesh:

- ``data``: all devices on 'data'. Parameters replicated, the batch split: plain data parallel;
  gradients are all-reduced.
- ``fsdp``: all devices on 'fsdp'. The batch is split as in data parallel, and every
  parameter (and its optimizer moments) is split along its 'embed' axis (ZeRO-3 / FSDP): each
  layer's weights are all-gathered before use and gradients reduce-scattered.
- ``tensor``: all devices on 'tensor'. Heads, MLP columns and the vocabulary are split
  (Megatron-style tensor parallelism); the batch is replicated and activations are
  all-reduced after the attention output and MLP down projections.

Any mix works too (`make_mesh(data=2, tensor=4)`). A dimension that does not divide by its mesh
axes stays replicated (`param_specs` reports which). On one device every rule is a no-op.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from math import prod
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vishwamai import train as _train
from vishwamai.measure import CompiledStats

MESH_AXES = ("data", "fsdp", "tensor")
LAYOUTS = ("data", "fsdp", "tensor")

#: Logical name -> mesh axes. Read top to bottom; a mesh axis is used at most once per array.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("head_dim", None),
    ("norm", None),
    ("position", None),
    # The stacked layer axis of a scanned model (`ModelConfig.scan_layers`): every device
    # holds all L slices of its shard, so the scan reads its layer locally.
    ("layers", None),
)


# ============================================================================================
# meshes
# ============================================================================================

def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when the environment describes a multi-process job.

    Recognised: `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), a SLURM
    or Open MPI job with more than one task, or a multi-host Cloud TPU slice
    (`TPU_WORKER_HOSTNAMES` naming several hosts). Must run before anything touches JAX's
    backends. Returns True if it initialised, False on a single host (nothing to do).
    """
    env = os.environ
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1") or 1) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
        or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    )
    if not multi:
        return False
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:  # already initialised, or backends already in use
        if "already" in str(e).lower():
            return True
        raise
    return True


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence | None = None) -> jax.sharding.Mesh:
    """A `('data', 'fsdp', 'tensor')` mesh of `data * fsdp * tensor` devices.

    Axis types are `Auto` (the compiler propagates shardings and `with_sharding_constraint`
    steers it; JAX 0.10 would otherwise default to Explicit axes).

    Raises:
      ValueError: a size < 1, or more devices asked for than exist.
    """
    sizes = (data, fsdp, tensor)
    if any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"mesh sizes must be ints >= 1; got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    devices = list(jax.devices() if devices is None else devices)
    n = prod(sizes)
    if n > len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {n} devices; "
                         f"{len(devices)} available")
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices[:n])


def layout_shape(layout: str, n_devices: int) -> dict:
    """Mesh sizes of a named layout over `n_devices`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    return {"data": 1, "fsdp": 1, "tensor": 1, layout: n_devices}


def mesh_for_layout(layout: str, n_devices: int | None = None, *, devices=None):
    """The mesh of a named layout over the first `n_devices` devices (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if n_devices is None else n_devices
    return make_mesh(**layout_shape(layout, n), devices=devices)


# ============================================================================================
# logical names -> shardings
# ============================================================================================

def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return prod(mesh.shape[a] for a in axes)


def fit_spec(logical: P | Sequence, shape: Sequence[int], mesh, rules=LOGICAL_AXIS_RULES):
    """Mesh `PartitionSpec` for an array with these logical names and this shape.

    A dimension whose size is not a multiple of its mesh axes' total size stays replicated.
    Returns `(spec, dropped)` with `dropped` the logical names that could not be split.
    """
    mesh_axes = nn.logical_to_mesh_axes(tuple(logical), rules)
    out, dropped = [], []
    for name, axes, size in zip(tuple(logical), tuple(mesh_axes), shape):
        if axes is not None and size % _axis_size(mesh, axes):
            dropped.append(name)
            axes = None
        # Size-1 mesh axes split nothing; leaving them out keeps specs readable.
        if axes is not None:
            kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes)
                         if mesh.shape[a] > 1)
            axes = None if not kept else (kept[0] if len(kept) == 1 else kept)
        out.append(axes)
    return P(*out), dropped


def _is_spec(x):
    return isinstance(x, P)


def param_specs(model, mesh, rules=LOGICAL_AXIS_RULES):
    """Mesh `PartitionSpec`s of the model's parameters (a tree shaped like the params)."""
    logical = model.param_axes()
    abstract = model.abstract_params()
    return jax.tree.map(lambda spec, a: fit_spec(spec, a.shape, mesh, rules)[0],
                        logical, abstract, is_leaf=_is_spec)


def param_shardings(model, mesh, rules=LOGICAL_AXIS_RULES):
    """`NamedSharding`s of the model's parameters."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(model, mesh, rules),
                        is_leaf=_is_spec)


def _dict_key_names(path) -> tuple:
    names = []
    for k in reversed(path):
        if isinstance(k, jax.tree_util.DictKey):
            names.append(str(k.key))
        else:
            break
    return tuple(reversed(names))


def state_shardings(model, optimizer, mesh, rules=LOGICAL_AXIS_RULES):
    """`NamedSharding`s of a whole `TrainState`: parameters by their logical names, and every
    optimizer leaf that mirrors a parameter (Adam's moments) like that parameter; scalars
    (step, counts, learning rate) and the rng replicated."""
    abstract = jax.eval_shape(functools.partial(_train.create_train_state, model, optimizer),
                              jax.random.PRNGKey(0))
    by_path = {}
    specs = param_specs(model, mesh, rules)
    for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]:
        by_path[_dict_key_names(path)] = spec
    shapes = {_dict_key_names(p): a.shape
              for p, a in jax.tree_util.tree_flatten_with_path(model.abstract_params())[0]}

    def pick(path, leaf):
        names = _dict_key_names(path)
        for start in range(len(names)):
            key = names[start:]
            if key in by_path and shapes[key] == leaf.shape:
                return NamedSharding(mesh, by_path[key])
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(pick, abstract)


def batch_sharding(mesh, batch_size: int | None = None, rules=LOGICAL_AXIS_RULES):
    """Sharding of a `[B, T]` token batch: B over the mesh axes of 'activation_batch'."""
    spec, _ = fit_spec(("activation_batch", "activation_length"),
                       (batch_size or _axis_size(mesh, ("data", "fsdp")), 1), mesh, rules)
    return NamedSharding(mesh, spec)


def process_rows(sharding, global_shape) -> slice:
    """The rows (first axis) of a global array that this process's devices hold under
    `sharding`: what a process must load of a global batch. All rows on one process."""
    idx = sharding.addressable_devices_indices_map(tuple(global_shape)).values()
    rows = [i[0] if i else slice(None) for i in idx]
    n = global_shape[0]
    start = min(r.start or 0 for r in rows)
    stop = max(n if r.stop is None else r.stop for r in rows)
    return slice(start, stop)


def global_batch(local_rows, sharding, global_shape):
    """The global `jax.Array` of a batch from this process's rows of it (`process_rows`), with
    `jax.make_array_from_process_local_data`; every process calls it with its own rows. In a
    single process the rows are the whole batch."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_rows),
                                                  tuple(global_shape))


class _Context:
    """`jax.set_mesh(mesh)` plus Flax's logical rules, as one context manager."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._m = jax.set_mesh(self.mesh)
        self._m.__enter__()
        self._r = nn.logical_axis_rules(self.rules)
        self._r.__enter__()

    def __exit__(self, *exc):
        self._r.__exit__(*exc)
        return self._m.__exit__(*exc)


def mesh_context(mesh, rules=LOGICAL_AXIS_RULES):
    """Context in which the model's logical constraints apply on `mesh`."""
    return _Context(mesh, rules)


# ============================================================================================
# sharded init, gradients and train step
# ============================================================================================

def init_sharded_state(model, optimizer, mesh, rng, rules=LOGICAL_AXIS_RULES):
    """A `TrainState` created directly in its sharded layout (no device ever holds all of it
    unless the layout replicates it)."""
    shardings = state_shardings(model, optimizer, mesh, rules)
    with mesh_context(mesh, rules):
        return jax.jit(functools.partial(_train.create_train_state, model, optimizer),
                       out_shardings=shardings)(rng)


def shard_params(params, model, mesh, rules=LOGICAL_AXIS_RULES):
    """`params` moved onto the mesh in the layout the rules give them."""
    return jax.device_put(params, param_shardings(model, mesh, rules))


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


if __name__ == "__main__":
    _main(sys.argv[1:])
