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
