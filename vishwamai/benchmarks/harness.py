"""Timing and environment helpers shared by every benchmark.

Conventions (DESIGN.md): warm-up first, compile time measured and reported apart,
`block_until_ready` at both edges, median and spread over repeats, and an out-of-memory
failure becomes a result row instead of a crash.
"""
from __future__ import annotations

import datetime
import platform
import time

import jax
import numpy as np


def env_info() -> dict:
    """Where a measurement ran: device, versions and date (attach to every result file)."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _block(tree):
    return jax.tree_util.tree_map(
        lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def time_fn(fn, *args, warmup: int = 1, repeats: int = 5, **kwargs) -> dict:
    """Times `fn(*args, **kwargs)`: the first call (compile + run) apart, then `repeats` warm calls.

    `fn` should be jitted; its outputs are blocked on so asynchronous dispatch is not mistaken
    for speed. Returns seconds: `first_call_s`, `median_s`, `min_s`, `p10_s`, `p90_s`, `times_s`.
    """
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1; got warmup={warmup}, repeats={repeats}")
    _block(args)
    t0 = time.perf_counter()
    _block(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        _block(fn(*args, **kwargs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return {
        "first_call_s": first,
        "median_s": float(np.median(t)),
        "min_s": float(t.min()),
        "p10_s": float(np.percentile(t, 10)),
        "p90_s": float(np.percentile(t, 90)),
        "times_s": [float(x) for x in t],
    }


def compile_time(jitted, *args, **kwargs) -> tuple[object, float]:
    """Lowers and compiles `jitted` for these arguments; returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def is_oom(exc: BaseException) -> bool:
    """True when `exc` is an allocation failure (XLA's RESOURCE_EXHAUSTED or a host MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    return any(m in str(exc) for m in _OOM_MARKERS)


# ----------------------------------------------------------------------------------------------
# peaks, sweeps and result files
# ----------------------------------------------------------------------------------------------

def measure_matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5,
                        reps: int = 4) -> float:
    """A fresh (uncached) reading of this host's jitted-matmul FLOP/s.

    The method of `vishwamai.analysis.hardware.measure_cpu_peak` (a jitted chain of `reps`
    [n,n]@[n,n] matmuls, 2*n**3 FLOPs each, median of `repeats` warm calls), which caches one
    reading per process; benchmarks read it again before and after their runs, because a shared
    machine's throughput drifts, and divide by the higher reading.
    """
    import jax.numpy as jnp
    x = jnp.ones((n, n), dtype)
    y = jnp.ones((n, n), dtype)

    @jax.jit
    def f(a, b):
        acc = a
        for _ in range(reps):
            acc = (acc @ b) * (1.0 / n)
        return acc

    f(x, y).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x, y).block_until_ready()
        times.append(time.perf_counter() - t0)
    return reps * 2.0 * n**3 / float(np.median(times))


def device_peak(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s, source) of the first device: the hardware table on accelerators, a fresh
    measurement on CPU; (nan, reason) when neither is available."""
    if jax.default_backend() == "cpu":
        return measure_matmul_peak("float32"), "measured: jitted float32 matmul on this CPU"
    try:
        from vishwamai.analysis.hardware import peak_flops
        return peak_flops(dtype)
    except Exception as e:  # missing library or unknown chip
        return float("nan"), f"no peak available: {e}"


def oom_row(params: dict, exc: BaseException) -> dict:
    """The row recorded for a configuration that ran out of memory."""
    msg = str(exc).strip().splitlines()
    return {**params, "status": "oom", "error": (msg[0] if msg else type(exc).__name__)[:300]}


def run_sweep(measure, grid, *, desc: str = "sweep", progress: bool = True) -> list[dict]:
    """Calls `measure(**params)` for each dict in `grid` behind a tqdm progress bar.

    A run that fails for lack of memory (`is_oom`) becomes a row with status 'oom' and the
    sweep goes on; any other error propagates. Successful rows get status 'ok'.
    """
    grid = list(grid)
    rows = []
    it = grid
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(grid, desc=desc, leave=False)
        except ImportError:  # tqdm is optional for the harness itself
            pass
    for params in it:
        try:
            row = measure(**params)
            rows.append({**params, **row, "status": row.get("status", "ok")})
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_oom(e):
                raise
            rows.append(oom_row(params, e))
    return rows


def results_frame(rows):
    """Rows as a pandas DataFrame (list-valued columns kept as they are)."""
    import pandas as pd
    return pd.DataFrame(list(rows))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if x != x or x in (float("inf"), float("-inf")) else x
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def save_results(path: str, payload: dict) -> str:
    """Writes `payload` plus `env_info()` (under 'env') as JSON; NaN becomes null."""
    import json
    import os
    payload = dict(payload)
    payload.setdefault("env", env_info())
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(payload), f, indent=1)
    return path


def measure_memory_bandwidth(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Streaming bytes/s of one jitted elementwise pass (read `n_bytes`, write `n_bytes`),
    the fastest of `repeats`: the DRAM bandwidth elementwise work gets on this device (on an
    accelerator it approaches the HBM figure)."""
    import jax.numpy as jnp
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0000001 + 1.0)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * x.size * 4 / best

