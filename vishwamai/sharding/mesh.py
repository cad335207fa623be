"""Meshes and layouts: the logical-axis rules that map the model's named axes onto the
`('data', 'fsdp', 'tensor')` mesh, multi-process start-up (`initialize_distributed`), meshes per
layout, the `PartitionSpec` of every parameter, optimizer state and batch (fitted to what
divides), per-process batch rows, the mesh context, and placing a state or parameters on a
mesh.
"""
from __future__ import annotations

import functools
import os
from math import prod
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vishwamai import train as _train


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
