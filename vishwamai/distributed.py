"""More than one process: `jax.distributed` with bounded waits, and a sharded training run
that gives the same numbers on one process or several.

A multi-process JAX job is the same program started once per host (or several times on one
machine): process 0 also runs the coordination service the others connect to. Every process
sees all devices (`jax.devices()`) but holds only its own (`jax.local_devices()`); a mesh over
all of them makes a jitted step one program whose collectives cross process boundaries (on
CPU through Gloo over TCP).

A job must not hang when one process dies. Two bounds decide how long the others wait:

- `initialization_timeout`: how long `initialize` waits for all processes to connect;
- `heartbeat_timeout`: how long the coordination service waits for a process's heartbeat
  before declaring it dead and stopping the job. The survivors are then terminated by JAX
  (a non-zero exit); a survivor blocked in a collective with the dead process fails earlier,
  when the Gloo connection breaks.

`python -m vishwamai.distributed` runs `train_run` in one process of such a job (or alone),
prints its losses as one JSON line and writes them with the final parameters (`--out`);
tests/test_multiprocess.py starts two of them and compares with one process of 4 devices.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Mapping

import jax
import numpy as np

from vishwamai import sharding as _sharding
from vishwamai import train as _train


def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               local_cpu_devices: int | None = None, initialization_timeout: int = 60,
               heartbeat_timeout: int = 10, shutdown_timeout: int = 30) -> None:
    """Joins this process to a multi-process job (`jax.distributed.initialize`).

    Must run before anything touches JAX's backends. On CPU it selects Gloo collectives and,
    if given, `local_cpu_devices` devices in this process (`jax_num_cpu_devices`).

    Args:
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes, process_id: the job's size and this process's rank (0 hosts the service).
      local_cpu_devices: CPU devices of this process (None: the platform's default).
      initialization_timeout: seconds to wait for every process to connect.
      heartbeat_timeout: seconds without a heartbeat after which a process counts as dead
        and the job is stopped (JAX's default, 100 s, makes survivors wait that long).
      shutdown_timeout: seconds the shutdown barrier waits for the other processes.

    Raises:
      ValueError: a bad argument (named, with its value).
    """
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be an int >= 1; got {num_processes!r}")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise ValueError(f"process_id must be an int in [0, {num_processes}); got {process_id!r}")
    if not (isinstance(coordinator_address, str) and ":" in coordinator_address):
        raise ValueError(f"coordinator_address must be 'host:port'; got {coordinator_address!r}")
    for name, v in (("initialization_timeout", initialization_timeout),
                    ("heartbeat_timeout", heartbeat_timeout),
                    ("shutdown_timeout", shutdown_timeout)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an int >= 1 (seconds); got {v!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if local_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", local_cpu_devices)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout,
                               shutdown_timeout_seconds=shutdown_timeout)


def _batch(step: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> np.ndarray:
    """The global batch of `step`: the same on every process, whatever the job's size."""
    return np.random.default_rng([seed, step]).integers(
        0, vocab, (batch_size, seq_len + 1), dtype=np.int32)


def train_run(cfg="tiny", *, layouts=("data", "fsdp"), steps: int = 3, batch_size: int = 8,
              seq_len: int = 16, seed: int = 0, on_done=None, hold: bool = False) -> dict:
    """`steps` sharded train steps over all devices of the job, in each named layout.

    Each process builds only its own rows of every global batch (`sharding.process_rows`,
    `sharding.global_batch`), as a real input pipeline would; the final parameters are
    gathered to every process (`multihost_utils.process_allgather`).

    Args:
      layouts: names from `sharding.LAYOUTS`, each over all devices, run one after another.
      on_done: called with the result once every layout has run.
      hold: then keep stepping in the last layout until the process is stopped (a job whose
        processes are busy in collectives, for failure tests).

    Returns:
      ``{layout: {'losses': [...], 'params': [numpy leaves]}}``.
    """
    from jax.experimental import multihost_utils

    model = _train.as_model(cfg)
    opt = _train.make_optimizer(warmup_steps=1, total_steps=max(2, steps))
    shape = (batch_size, seq_len + 1)
    out = {}
    for layout in layouts:
        mesh = _sharding.mesh_for_layout(layout)
        state = _sharding.init_sharded_state(model, opt, mesh, jax.random.PRNGKey(seed))
        step_fn = _sharding.make_sharded_train_step(model, opt, mesh, batch_size=batch_size)
        rows = _sharding.process_rows(step_fn.batch_sharding, shape)

        def run(state, i):
            full = _batch(i, batch_size, seq_len, model.config.vocab_size, seed)
            return step_fn(state, _sharding.global_batch(full[rows], step_fn.batch_sharding,
                                                         shape))

        losses = []
        for i in range(steps):
            state, metrics = run(state, i)
            losses.append(float(metrics["loss"]))
        params = multihost_utils.process_allgather(state.params, tiled=True)
        out[layout] = {"losses": losses,
                       "params": [np.asarray(x) for x in jax.tree.leaves(params)]}
    if on_done is not None:
        on_done(out)
    i = steps
    while hold:
        state, metrics = run(state, i)
        jax.block_until_ready(metrics)
        i += 1
    return out


def save_result(path: str, result: Mapping) -> None:
    """`train_run`'s result as one `.npz`: ``<layout>/losses`` and ``<layout>/<i>`` leaves."""
    arrays = {}
    for layout, r in result.items():
        arrays[f"{layout}/losses"] = np.asarray(r["losses"])
        arrays.update({f"{layout}/{i}": p for i, p in enumerate(r["params"])})
    np.savez(path, **arrays)


def _main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m vishwamai.distributed",
                                 description="a sharded training run in one process of a job")
    ap.add_argument("--coordinator", help="host:port of process 0 (omit for one process)")
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--local-devices", type=int, default=None, help="CPU devices per process")
    ap.add_argument("--heartbeat-timeout", type=int, default=10)
    ap.add_argument("--init-timeout", type=int, default=60)
    ap.add_argument("--layouts", default="data,fsdp", help="comma-separated, of "
                    f"{_sharding.LAYOUTS}")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--hold", action="store_true",
                    help="after the run, keep stepping until stopped (failure tests)")
    ap.add_argument("--out", help="write losses and parameters here (.npz; process 0 only)")
    a = ap.parse_args(argv)
    if a.coordinator:
        initialize(a.coordinator, a.num_processes, a.process_id,
                   local_cpu_devices=a.local_devices, initialization_timeout=a.init_timeout,
                   heartbeat_timeout=a.heartbeat_timeout)
    elif a.local_devices is not None:
        jax.config.update("jax_num_cpu_devices", a.local_devices)
    t0 = time.perf_counter()

    def done(result):
        if a.out and jax.process_index() == 0:
            save_result(a.out, result)
        print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                          "devices": jax.device_count(),
                          "losses": {k: v["losses"] for k, v in result.items()},
                          "seconds": time.perf_counter() - t0}), flush=True)

    try:
        train_run(layouts=a.layouts.split(","), steps=a.steps, batch_size=a.batch_size,
                  seq_len=a.seq_len, on_done=done, hold=a.hold)
    except Exception as e:
        if jax.process_count() > 1:   # one line to find in the log before JAX's own report
            first = (str(e).strip().splitlines() or [""])[0][:400]
            print(f"vishwamai.distributed: process {jax.process_index()} of "
                  f"{jax.process_count()} failed ({type(e).__name__}: {first}); if another "
                  "process died, the job stops within the heartbeat timeout "
                  f"({a.heartbeat_timeout} s)", file=sys.stderr, flush=True)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
