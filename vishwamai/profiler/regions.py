"""The parts `TPUProfiler` is built from: the definitions of every reported column
(`DEFINITIONS`), one timed call (`_Call`), a region (`Region`, the `with` block's record) and a
tracked function (`_Tracked`, what `wrap` returns), and the per-region summary (utilisation
against the peak, memory efficiency) computed from the calls.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np

from vishwamai.measure import CompiledStats


DEFINITIONS = {
    "time_s_mean / time_s_p50 / time_s_p95": "wall-clock seconds per call of a region, measured "
        "from entry (after earlier work finished) to exit (after the region's own work "
        "finished): mean, median and 95th percentile over calls",
    "flops": "floating-point operations of one call: the sum of `cost_analysis()['flops']` of "
        "the compiled executables the region ran (flops_source 'cost_analysis'), or the number "
        "the caller passed (flops_source 'given', e.g. model FLOPs from vishwamai.analysis)",
    "bytes_accessed": "bytes read and written by the region's executables, from cost_analysis",
    "achieved_flops_per_s": "flops / time of the call; *_mean is total flops / total time over "
        "all calls with known flops",
    "mfu": "achieved_flops_per_s / peak_flops_per_s (model FLOPs utilisation when the FLOPs "
        "given are model FLOPs; with cost_analysis FLOPs it counts what the compiler executes, "
        "rematerialisation included)",
    "peak_flops_per_s": "the device's peak from vishwamai.analysis.hardware.peak_flops (a table "
        "entry with its source on TPU/GPU, a measured jitted matmul on CPU) unless the config "
        "gives 'peak_flops'",
    "busy_fraction": "fraction of a region's wall time during which the device executed XLA "
        "operations (union of op intervals in the jax.profiler trace, device planes on GPU/TPU, "
        "the XLA CPU runtime's threads on CPU); needs tracing (a log_dir)",
    "tpu_utilization_mean": "mean over calls of busy_fraction where a trace gives it, else mean "
        "over calls of mfu; 'tpu_utilization_source' says which",
    "memory_efficiency_mean": "mean over calls of (peak bytes in use) / (device memory limit): "
        "device.memory_stats() 'peak_bytes_in_use' / 'bytes_limit' where the platform reports "
        "them (GPU/TPU; a process-wide high-water mark), else the compiled executables' "
        "memory_analysis (arguments + outputs - aliased + temporaries, max over the region's "
        "executables) over the host's physical memory (CPU); 'memory_efficiency_source' says "
        "which",
}


@dataclass
class _Call:
    name: str
    wall_s: float
    flops: float = math.nan
    flops_source: str = ""
    bytes_accessed: float = math.nan
    compiled_peak_bytes: float = math.nan
    stats_peak_bytes: float = math.nan
    stats_limit_bytes: float = math.nan
    busy_fraction: float = math.nan
    annotation: str = ""
    t_start_ns: int = 0
    t_end_ns: int = 0


class Region:
    """Handle of an open region: register outputs, run executables, add FLOPs."""

    def __init__(self, profiler: "TPUProfiler", name: str):
        self.profiler, self.name = profiler, name
        self._outputs: list = []
        self._flops = 0.0
        self._flops_known = False
        self._bytes = 0.0
        self._bytes_known = False
        self._peak = math.nan
        self.wall_s = math.nan  # set when the region closes

    def register(self, *outputs):
        """Blocks on `outputs` at region exit; returns them (one output returned bare)."""
        self._outputs.extend(outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def add_flops(self, flops: float, bytes_accessed: float | None = None) -> None:
        """Counts `flops` (and bytes) as work done in this region."""
        self._flops += float(flops)
        self._flops_known = True
        if bytes_accessed is not None:
            self._bytes += float(bytes_accessed)
            self._bytes_known = True

    def _add_compiled(self, stats: CompiledStats) -> None:
        if not math.isnan(stats.flops):
            self.add_flops(stats.flops,
                           None if math.isnan(stats.bytes_accessed) else stats.bytes_accessed)
        if not math.isnan(stats.peak_bytes):
            self._peak = stats.peak_bytes if math.isnan(self._peak) else max(self._peak,
                                                                             stats.peak_bytes)

    def run(self, fn: Callable, *args, **kwargs):
        """Calls `fn` (jitted) through the profiler: compiled once per input signature, its
        cost and memory analysis counted, its outputs registered."""
        return self.profiler.wrap(fn)(*args, **kwargs)


class _Tracked:
    """A jitted function whose calls are compiled once per signature and accounted."""

    def __init__(self, profiler: "TPUProfiler", fn: Callable):
        self.profiler, self.fn = profiler, fn
        self._cache: dict = {}
        self.__wrapped__ = fn

    def _signature(self, args, kwargs):
        def leaf(x):
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                return ("A", tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", "")))
            return ("S", repr(x))
        leaves, tree = jax.tree.flatten((args, kwargs))
        return tree, tuple(leaf(x) for x in leaves)

    def _entry(self, args, kwargs):
        key = self._signature(args, kwargs)
        if key not in self._cache:
            if not hasattr(self.fn, "lower"):
                raise TypeError("TPUProfiler.wrap needs a jitted function (jax.jit(...)); got "
                                f"{type(self.fn).__name__}")
            compiled = self.fn.lower(*args, **kwargs).compile()
            self._cache[key] = (compiled, CompiledStats.of(compiled))
        return self._cache[key]

    def __call__(self, *args, **kwargs):
        compiled, stats = self._entry(args, kwargs)
        out = compiled(*args, **kwargs)
        region = self.profiler._current
        if region is not None:
            region._add_compiled(stats)
            region.register(out)
        return out

    def cost(self, *args, **kwargs) -> dict:
        """flops, bytes and peak_bytes of the executable for these arguments (compiles once)."""
        stats = self._entry(args, kwargs)[1]
        return {"flops": stats.flops, "bytes": stats.bytes_accessed,
                "peak_bytes": stats.peak_bytes}


def _block_all(outputs) -> None:
    """Waits for `outputs`, or for every live array when none were registered."""
    targets = outputs if outputs else jax.live_arrays()
    for x in jax.tree.leaves(targets):
        if hasattr(x, "block_until_ready"):
            try:
                x.block_until_ready()
            except RuntimeError:  # deleted (donated) buffers have nothing to wait for
                pass
    jax.effects_barrier()


def _host_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX host
        return math.nan


def _memory_efficiency(c: _Call, host_mem: float) -> tuple[float, str]:
    """(peak bytes / memory, source) of one call; NaN when neither source is known."""
    if not math.isnan(c.stats_peak_bytes) and c.stats_limit_bytes > 0:
        return (c.stats_peak_bytes / c.stats_limit_bytes,
                "device.memory_stats(): peak_bytes_in_use / bytes_limit")
    if not math.isnan(c.compiled_peak_bytes) and not math.isnan(host_mem):
        return (c.compiled_peak_bytes / host_mem,
                "compiled memory_analysis() peak / host physical memory")
    return math.nan, ""


def _utilization(c: _Call, peak: float, tracing: bool) -> tuple[float, str]:
    """(utilization, source) of one call: the traced busy fraction, else its MFU."""
    if not math.isnan(c.busy_fraction):
        return c.busy_fraction, "busy_fraction (jax.profiler trace)"
    if not math.isnan(c.flops) and not math.isnan(peak):
        return (c.flops / c.wall_s / peak,
                "mfu (no device busy time: " + ("not in trace" if tracing else "tracing off")
                + ")")
    return math.nan, ""


def _region_summary(calls: list[_Call], peak: float, host_mem: float) -> dict:
    """Count, time percentiles, FLOPs, rate, MFU, busy fraction and memory of one region."""
    t = np.array([c.wall_s for c in calls])
    fl = np.array([c.flops for c in calls])
    known = ~np.isnan(fl)
    afps = fl[known].sum() / t[known].sum() if known.any() else math.nan
    busy = [c.busy_fraction for c in calls if not math.isnan(c.busy_fraction)]
    mem = [m for m, _ in (_memory_efficiency(c, host_mem) for c in calls) if not math.isnan(m)]
    byts = [c.bytes_accessed for c in calls if not math.isnan(c.bytes_accessed)]
    return {
        "count": len(calls),
        "time_s_mean": float(t.mean()),
        "time_s_p50": float(np.percentile(t, 50)),
        "time_s_p95": float(np.percentile(t, 95)),
        "time_s_total": float(t.sum()),
        "flops": float(np.mean(fl[known])) if known.any() else math.nan,
        "flops_source": calls[-1].flops_source or "unknown",
        "bytes_accessed": float(np.mean(byts)) if byts else math.nan,
        "achieved_flops_per_s": float(afps),
        "mfu": float(afps / peak) if not math.isnan(peak) else math.nan,
        "busy_fraction": float(np.mean(busy)) if busy else math.nan,
        "memory_efficiency": float(np.mean(mem)) if mem else math.nan,
    }
