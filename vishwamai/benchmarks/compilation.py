"""Compile seconds of a training step, scanned against unrolled blocks (`ModelConfig.scan_layers`).

    python -m vishwamai.bench compile --presets tiny base --layers 2 4 8 --out compile.json
    python -m vishwamai.bench compile --presets llama2_7b --backends v5e:4x4   # needs libtpu

The step is `vishwamai.sharding.make_sharded_train_step` (AdamW, chunked loss, state donated)
lowered on abstract inputs (`ShapeDtypeStruct`s: nothing is allocated or run) and compiled:
the seconds are `vishwamai.measure.compile_time` (lower + compile), the sizes
`CompiledStats`. The target is the host CPU (one device) or, with `libtpu` installed, the
abstract chips of a TPU topology (`jax.experimental.topologies`): then the XLA:TPU compiler
runs on this host, the state laid out FSDP over the topology's chips so a model that does not
fit one chip still compiles.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from vishwamai import sharding, train, validate
from vishwamai.config import PRESETS, ModelConfig, as_config
from vishwamai.measure import CompiledStats, compile_time, env_info, is_oom
from vishwamai.model import VishwamAI

DEFAULT_PRESETS = ("tiny", "base", "llama2_7b")


def target_devices(backend: str = "cpu") -> list:
    """The devices a step is compiled for: `'cpu'` (one host device) or a TPU topology name
    such as `'v5e:2x2'` (its abstract chips; needs `libtpu`).

    Raises:
      ValueError: the backend is neither, or libtpu is missing or rejects the name.
    """
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be 'cpu' or a TPU topology name; got {backend!r}")
    if backend == "cpu":
        return jax.devices("cpu")[:1]
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=backend).devices)
    except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown topology
        raise ValueError(f"backend={backend!r}: no TPU topology of that name could be built "
                         f"(is libtpu installed? `pip install \"jax[tpu]\"`): {e}") from e


def tpu_available() -> bool:
    """Whether `libtpu` can describe a TPU topology here (ahead-of-time compilation)."""
    try:
        target_devices("v5e:2x2")
        return True
    except ValueError:
        return False


def compile_seconds(cfg: ModelConfig | str, *, scan: bool, backend: str = "cpu",
                    num_layers: int | None = None, batch_size: int | None = None,
                    seq_len: int = 256) -> dict:
    """Lowers and compiles one train step of `cfg` and reports how long it took.

    Args:
      cfg: a `ModelConfig` or preset name.
      scan: `scan_layers` for this compile (overrides the config's).
      backend: `'cpu'` or a TPU topology name (see `target_devices`).
      num_layers: override L (the depth sweep); default the config's.
      batch_size: sequences per step; default one per device.
      seq_len: predicted tokens per sequence (the batch is `[B, seq_len + 1]`).
    Returns:
      dict: model, num_layers, scan_layers, backend, devices, batch_size, seq_len, status
      ('ok' or 'oom': the compiler's out-of-memory verdict, with verdict_s / verdict_cpu_s
      the seconds until it), compile_s (lower + compile, wall
      seconds), compile_cpu_s (this process's CPU seconds over the same span: on a shared
      host it moves less with the other load than the wall time does), load_avg (the host's
      1-minute load average when it finished), code_bytes (generated code, where the backend reports it), peak_bytes (per device).
    """
    if not isinstance(scan, bool):
        raise ValueError(f"scan must be a bool; got {scan!r}")
    c = as_config(cfg)
    c = c.replace(scan_layers=scan, num_layers=num_layers or c.num_layers,
                  max_seq_len=max(c.max_seq_len, seq_len + 1))
    devices = target_devices(backend)
    B = batch_size or len(devices)
    model = VishwamAI(c)
    opt = train.make_optimizer(warmup_steps=1, total_steps=10)
    mesh = sharding.mesh_for_layout("fsdp", len(devices), devices=devices)
    step = sharding.make_sharded_train_step(model, opt, mesh, batch_size=B)
    abstract = jax.eval_shape(functools.partial(train.create_train_state, step.model, opt),
                              jax.random.PRNGKey(0))
    state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, step.state_shardings)
    batch_in = jax.ShapeDtypeStruct((B, seq_len + 1), jnp.int32, sharding=step.batch_sharding)
    row = {"model": c.name, "num_layers": c.num_layers, "scan_layers": scan, "backend": backend,
           "device_kind": devices[0].device_kind, "devices": len(devices), "batch_size": B,
           "seq_len": seq_len, "status": "ok"}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        with sharding.mesh_context(mesh):
            compiled, seconds = compile_time(step.jitted, state_in, batch_in)
        cpu_s = time.process_time() - cpu0
    except Exception as e:  # noqa: BLE001 - only the compiler's OOM verdict becomes a row
        if not is_oom(e):
            raise
        return {**row, "status": "oom", "error": str(e).splitlines()[0][:300],
                "compile_s": math.nan, "compile_cpu_s": math.nan,
                "verdict_s": time.perf_counter() - wall0,
                "verdict_cpu_s": time.process_time() - cpu0, "load_avg": _load(),
                "code_bytes": math.nan, "peak_bytes": math.nan}
    stats = CompiledStats.of(compiled)
    return {**row, "compile_s": seconds, "compile_cpu_s": cpu_s, "load_avg": _load(),
            "code_bytes": stats.code_bytes, "peak_bytes": stats.peak_bytes}


def step_seconds(cfg: ModelConfig | str, *, batch_size: int = 2, seq_len: int = 128,
                 repeats: int = 5, dtype: str | None = None) -> dict:
    """Run time of one train step with scanned and with unrolled blocks, timed alternately.

    The two steps start from the same parameters (`stack_layers` of the unrolled init) and
    take turns, one timed call each per round, so a shared host's drifting load falls on both
    alike. Steps run on the default device without donation (the state is reused).

    Returns:
      dict: model, num_layers, batch_size, seq_len, dtype; for 'scanned' and 'unrolled':
      compile_s and median_s / min_s over `repeats` rounds; ratio (scanned median over
      unrolled median); loss_diff (|scanned - unrolled| loss of the first step, a check that
      both ran the same model).
    """
    from vishwamai.measure import time_fn
    from vishwamai.transformer import stack_layers

    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1; got {repeats!r}")
    c = as_config(cfg)
    c = c.replace(dropout_rate=0.0, max_seq_len=max(c.max_seq_len, seq_len + 1),
                  **({"dtype": dtype} if dtype else {}))
    opt = train.make_optimizer(warmup_steps=1, total_steps=10_000)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (batch_size, seq_len + 1), 0,
                                c.vocab_size)
    runs = {}
    unrolled_params = None
    for scan in (False, True):
        model = VishwamAI(c.replace(scan_layers=scan))
        if unrolled_params is None:
            unrolled_params = model.init(jax.random.PRNGKey(0))
        params = stack_layers(unrolled_params, c.num_layers) if scan else unrolled_params
        state = train.create_train_state(model, opt, jax.random.PRNGKey(2), params=params)
        compiled, c_s = compile_time(train.make_train_step(model, opt, donate=False),
                                     state, tokens)
        _, metrics = compiled(state, tokens)
        runs["scanned" if scan else "unrolled"] = {
            "fn": compiled, "state": state, "compile_s": c_s, "times": [],
            "loss": float(metrics["loss"])}
    for _ in range(repeats):
        for r in runs.values():
            r["times"].append(time_fn(r["fn"], r["state"], tokens, warmup=1,
                                      repeats=1)["median_s"])
    out = {"model": c.name, "num_layers": c.num_layers, "batch_size": batch_size,
           "seq_len": seq_len, "dtype": c.dtype, "repeats": repeats}
    for name, r in runs.items():
        t = sorted(r["times"])
        out[name] = {"compile_s": r["compile_s"], "median_s": t[len(t) // 2], "min_s": t[0]}
    out["ratio"] = out["scanned"]["median_s"] / out["unrolled"]["median_s"]
    out["loss_diff"] = abs(runs["scanned"]["loss"] - runs["unrolled"]["loss"])
    return out


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not every platform has one
        return math.nan


def _line(r: dict) -> str:
    return (f"{r['model']:>14s} L={r['num_layers']:<3d} "
            f"{'scanned ' if r['scan_layers'] else 'unrolled'} {r['backend']}: "
            f"{r['compile_s']:8.2f} s wall, {r['compile_cpu_s']:8.2f} s CPU "
            f"(load {r['load_avg']:.1f})  {r['status']}")


def sweep(presets: Sequence[str] = DEFAULT_PRESETS, *, layers: Sequence[int] | None = None,
          scans: Sequence[bool] = (True, False), backends: Sequence[str] = ("cpu",),
          seq_len: int = 256, batch_size: int | None = None, log: bool = False,
          on_row=None, warmup: bool = True) -> list[dict]:
    """`compile_seconds` for every backend x preset x depth (default: the preset's) x scan
    setting. `log` prints one line per compile as it finishes; `on_row(rows)` is called after
    each (e.g. to save what is done before a long compile). `warmup` first compiles a
    one-layer tiny step per backend, untimed: a process's first compile also pays one-time
    set-up (tracing machinery, the compiler's own initialisation) that would land on the
    first row."""
    rows = []
    for backend in backends:
        if warmup:
            compile_seconds("tiny", scan=True, backend=backend, num_layers=1, seq_len=16)
        for name in presets:
            for L in (layers or [None]):
                for scan in scans:
                    rows.append(compile_seconds(name, scan=scan, backend=backend, num_layers=L,
                                                seq_len=seq_len, batch_size=batch_size))
                    if log:
                        print(_line(rows[-1]), flush=True)
                    if on_row is not None:
                        on_row(rows)
    return rows


_positive = validate.cli_type(validate.positive_int, int, what="an int")


def _preset(name: str) -> str:
    if name not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"preset {name!r} is not accepted: expected one of {sorted(PRESETS)}")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """This benchmark's options (`python -m vishwamai.bench compile`)."""
    parser.add_argument("--presets", type=_preset, nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--layers", type=_positive, nargs="+", default=None,
                        help="depths to compile each preset at (default: the preset's)")
    parser.add_argument("--scan", choices=("both", "scanned", "unrolled"), default="both")
    parser.add_argument("--backends", nargs="+", default=["cpu"],
                        help="'cpu' and/or TPU topology names such as v5e:4x4 (need libtpu)")
    parser.add_argument("--seq", type=_positive, default=256, help="sequence length")
    parser.add_argument("--batch", type=_positive, default=None,
                        help="batch (default: 1 per chip)")
    parser.add_argument("--out", type=validate.cli_type(validate.writable_file, str),
                        default=None, help="write the result JSON here")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Runs the sweep, printing one line per compile; returns (and with `--out` writes) it."""
    from vishwamai.benchmarks.harness import save_results
    scans = {"both": (True, False), "scanned": (True,), "unrolled": (False,)}[args.scan]
    for backend in args.backends:            # every target checked before the first compile
        try:
            target_devices(backend)
        except ValueError as e:
            raise validate.InputError(f"--backends: {e}") from None
    payload = {"kind": "compile_time", "env": env_info(),
               "what": "lower + compile seconds of one AdamW train step (sharded FSDP over "
                       "the target's devices, abstract inputs, nothing run)",
               "seq_len": args.seq, "rows": []}

    def save(rows):
        payload["rows"] = rows
        if args.out:
            save_results(args.out, payload)

    sweep(args.presets, layers=args.layers, scans=scans, backends=args.backends,
          seq_len=args.seq, batch_size=args.batch, log=True, on_row=save)
    return payload
