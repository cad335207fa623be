"""Timing on any backend: warm-up first, compile apart, blocking at both edges, median and
spread; and the two rates a roofline needs on a host with no datasheet (the CPU's matmul peak
and its streaming memory bandwidth), measured on the spot.
"""
from __future__ import annotations

import datetime
import platform
import time

import jax
import jax.numpy as jnp
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


def block(tree):
    """Waits for every array in `tree`; returns it."""
    return jax.tree_util.tree_map(
        lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def spread(times) -> dict:
    """`median_s`, `min_s`, `p10_s`, `p90_s` and `times_s` of a list of seconds."""
    t = np.asarray(times, dtype=float)
    return {"median_s": float(np.median(t)), "min_s": float(t.min()),
            "p10_s": float(np.percentile(t, 10)), "p90_s": float(np.percentile(t, 90)),
            "times_s": [float(x) for x in t]}


def time_fn(fn, *args, warmup: int = 1, repeats: int = 5, **kwargs) -> dict:
    """Times `fn(*args, **kwargs)`: the first call (compile + run) apart, then `repeats` warm calls.

    `fn` should be jitted (or compiled); its outputs are blocked on so asynchronous dispatch is
    not mistaken for speed (a step that donates its state: time a closure that carries the
    state between calls). Returns seconds: `first_call_s`, `median_s`, `min_s`, `p10_s`,
    `p90_s`, `times_s`.
    """
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1; got warmup={warmup}, repeats={repeats}")
    block(args)
    t0 = time.perf_counter()
    block(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        block(fn(*args, **kwargs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, **spread(times)}


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


def matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5, reps: int = 4) -> float:
    """A fresh reading of this device's jitted-matmul FLOP/s.

    A jitted chain of `reps` [n,n]@[n,n] matmuls (2*n**3 FLOPs each), compile and a warm-up
    call excluded, median of `repeats` calls. On a CPU this is the peak MFU divides by; a
    shared machine's throughput drifts, so benchmarks read it before and after their runs and
    keep the higher (`higher_peak`).
    """
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


def higher_peak(before: tuple[float, str], after: tuple[float, str]) -> tuple[float, str]:
    """(peak, source) from two readings of a drifting peak: the higher one, both recorded."""
    return (max(before[0], after[0]),
            f"{before[1]}; higher of {before[0] / 1e9:.1f} (before) and "
            f"{after[0] / 1e9:.1f} (after) GFLOP/s")


def memory_bandwidth(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Streaming bytes/s of one jitted elementwise pass (read `n_bytes`, write `n_bytes`),
    the fastest of `repeats`: the DRAM bandwidth elementwise work gets on this device (on an
    accelerator it approaches the HBM figure)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0000001 + 1.0)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * x.size * 4 / best


def matvec_bandwidth(n: int = 8192, repeats: int = 5) -> float:
    """Bytes/s a jitted [n, n] @ [n] float32 product reads its matrix at, the fastest of
    `repeats`: the rate a decode step's weight reads get (a matrix-vector product per weight
    matrix). On a CPU it can be several times `memory_bandwidth`'s elementwise rate (XLA's
    CPU backend runs the two kinds of work differently)."""
    w = jnp.ones((n, n), jnp.float32)
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(w, x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(w, x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return w.size * 4 / best
