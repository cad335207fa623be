"""`TPUProfiler`: a thin, device-agnostic profiler whose every number is measured.

The seed's name is kept; nothing here is TPU specific. A *region* is a `with` block:

    profiler = TPUProfiler({'log_dir': 'tpu_profiles'})
    fwd = profiler.wrap(jax.jit(model.apply))          # optional: FLOPs from the compiler
    with profiler.profile_region('forward') as region:
        logits = fwd(variables, x)
    profiler.get_metrics_summary()

On entry a region waits for work dispatched before it; on exit it waits for the work dispatched
inside it (outputs registered with `region.register`, every output of a wrapped function, and
else every live JAX array, then `jax.effects_barrier()`), so asynchronous dispatch is never
mistaken for speed. FLOPs and bytes of a region come from the compiled executables it ran
(`cost_analysis()`, via `wrap` or `region.run`) or from the caller (`flops=`, e.g. the analysis
library's model FLOPs). With a `log_dir`, regions are also recorded as `jax.profiler` traces
(TensorBoard / XProf / Perfetto read them) and the device busy time is read back from the trace.

`get_metrics_summary()` documents each metric in its 'definitions' entry. A metric that cannot
be known on this platform is NaN, with the reason in 'reasons'. No number is a constant.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import numpy as np
import pandas as pd

from vishwamai import validate
from vishwamai.analysis.hardware import peak_flops
from vishwamai.measure import CompiledStats, busy_fractions

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


class TPUProfiler:
    """Times regions, counts their FLOPs and bytes, optionally traces them.

    Config keys (all optional):
      log_dir: directory for `jax.profiler` traces (None: no tracing).
      trace: trace each region (default: True when log_dir is given).
      peak_flops: peak FLOP/s to compute MFU against (default: `analysis.hardware.peak_flops`).
      dtype: dtype of that peak lookup (default 'bfloat16' on accelerators, 'float32' on CPU).
      device: the JAX device whose memory is reported (default: the first).
    """

    OPTIONS = ("log_dir", "trace", "peak_flops", "dtype", "device")

    def __init__(self, config: dict | None = None):
        if config is not None and not isinstance(config, Mapping):
            validate.fail("TPUProfiler config", config, f"a dict with keys from {list(self.OPTIONS)}",
                          type_error=True)
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.OPTIONS))
        if unknown:
            raise validate.InputError(f"TPUProfiler: unknown config keys {unknown}; accepted: "
                                      f"{list(self.OPTIONS)}")
        if config.get("log_dir") is not None and not isinstance(config["log_dir"], (str, os.PathLike)):
            validate.fail("log_dir", config["log_dir"], "a directory path or None", type_error=True)
        if "trace" in config:
            validate.boolean("trace", config["trace"])
        if config.get("peak_flops") is not None:
            validate.positive("peak_flops", config["peak_flops"])
        self.config = config
        self.log_dir = config.get("log_dir")
        self.trace = bool(config.get("trace", self.log_dir is not None))
        if self.trace and not self.log_dir:
            raise validate.InputError("TPUProfiler: trace=True needs a log_dir")
        self.device = config.get("device") or jax.devices()[0]
        self._calls: list[_Call] = []
        self._current: Region | None = None
        self._counter = itertools.count()
        self._session = False
        self._session_calls: list[_Call] = []
        self._peak: tuple[float, str] | None = None
        self._trace_error: str | None = None
        self.trace_dirs: list[str] = []

    # ------------------------------------------------------------------ tracing
    def _trace_files_before(self):
        return set(glob.glob(os.path.join(self._trace_dir, "**", "*.xplane.pb"),
                             recursive=True))

    def start_trace(self, subdir: str | None = None) -> None:
        """Starts one `jax.profiler` trace spanning every region until `stop_trace`, written
        under `log_dir` (or `log_dir/subdir`)."""
        if not self.log_dir:
            raise ValueError("TPUProfiler.start_trace needs a log_dir")
        self._trace_dir = os.path.join(self.log_dir, subdir) if subdir else self.log_dir
        os.makedirs(self._trace_dir, exist_ok=True)
        _block_all([])
        self._before = self._trace_files_before()
        jax.profiler.start_trace(self._trace_dir)
        self._session = True
        self._session_calls = []

    def stop_trace(self) -> str | None:
        """Stops the trace, fills in the busy fractions of the regions it saw; returns the
        trace file (None if none was written)."""
        if not self._session:
            return None
        _block_all([])
        jax.profiler.stop_trace()
        self._session = False
        new = sorted(self._trace_files_before() - self._before, key=os.path.getmtime)
        if not new:
            return None
        path = new[-1]
        self.trace_dirs.append(os.path.dirname(path))
        try:
            fractions = busy_fractions(path, [c.annotation for c in self._session_calls])
        except Exception as e:  # noqa: BLE001 - an unreadable trace: NaN, and the summary says why
            self._trace_error = f"trace {path} could not be read: {type(e).__name__}: {e}"
            fractions = {}
        for c in self._session_calls:
            c.busy_fraction = fractions.get(c.annotation, math.nan)
        return path

    # ------------------------------------------------------------------ regions
    def wrap(self, fn: Callable) -> _Tracked:
        """`fn` (jitted) made accountable: inside a region, each call adds the executable's
        cost_analysis FLOPs and bytes and its memory_analysis to the region and registers its
        outputs. Compiles once per input signature, outside the timing of later calls."""
        return fn if isinstance(fn, _Tracked) else _Tracked(self, fn)

    @contextlib.contextmanager
    def profile_region(self, name: str, *, flops: float | None = None,
                       bytes_accessed: float | None = None, block_all: bool = True):
        """Times the enclosed block as one call of region `name`.

        Args:
          name: region name (calls with the same name are aggregated).
          flops, bytes_accessed: work of one call, when known from outside (e.g. model FLOPs
            from `vishwamai.analysis.flops`); they replace the compiler's count.
          block_all: at exit with nothing registered, wait for every live array (the only way
            to wait for work dispatched by unjitted code).
        Yields:
          a `Region`.
        """
        if not isinstance(name, str) or not name:
            validate.fail("name", name, "a non-empty str (the region's name)", type_error=True)
        if flops is not None:
            validate.non_negative("flops", flops)
        if bytes_accessed is not None:
            validate.non_negative("bytes_accessed", bytes_accessed)
        if self._current is not None:
            raise RuntimeError(f"profile_region({name!r}) inside region {self._current.name!r}; "
                               "regions do not nest")
        own_trace = self.trace and not self._session
        k = next(self._counter)
        if own_trace:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            self.start_trace(f"{safe}-{k}")
        _block_all([])
        region = Region(self, name)
        annotation = f"vishwamai/{name}#{k}"
        self._current = region
        ann = jax.profiler.TraceAnnotation(annotation) if self._session else \
            contextlib.nullcontext()
        t0_ns = time.perf_counter_ns()
        try:
            with ann:
                yield region
                if region._outputs or block_all:
                    _block_all(region._outputs)
        except BaseException:
            self._current = None
            if own_trace:
                self.stop_trace()
            raise
        t1_ns = time.perf_counter_ns()
        self._current = None
        region.wall_s = (t1_ns - t0_ns) * 1e-9
        call = _Call(name=name, wall_s=(t1_ns - t0_ns) * 1e-9, annotation=annotation,
                     t_start_ns=t0_ns, t_end_ns=t1_ns)
        if flops is not None:
            call.flops, call.flops_source = float(flops), "given"
        elif region._flops_known:
            call.flops, call.flops_source = region._flops, "cost_analysis"
        if bytes_accessed is not None:
            call.bytes_accessed = float(bytes_accessed)
        elif region._bytes_known:
            call.bytes_accessed = region._bytes
        call.compiled_peak_bytes = region._peak
        stats = self.device.memory_stats()  # None on CPU
        if stats:
            call.stats_peak_bytes = float(stats.get("peak_bytes_in_use", math.nan))
            call.stats_limit_bytes = float(stats.get("bytes_limit", math.nan))
        self._calls.append(call)
        if self._session:
            self._session_calls.append(call)
        if own_trace:
            self.stop_trace()

    def reset(self) -> None:
        """Forgets every recorded call."""
        self._calls.clear()

    # ------------------------------------------------------------------ summary
    def peak(self) -> tuple[float, str]:
        """(peak FLOP/s, source) that MFU is computed against."""
        if "peak_flops" in self.config:
            return float(self.config["peak_flops"]), "given in the profiler config"
        if self._peak is None:
            on_cpu = self.device.platform == "cpu"
            dtype = self.config.get("dtype", "float32" if on_cpu else "bfloat16")
            try:
                self._peak = peak_flops(dtype, self.device)
            except ValueError as e:  # the chip's source gives no peak for this dtype
                self._peak = (math.nan, f"no peak available: {e}")
        return self._peak

    def get_metrics_summary(self) -> dict:
        """Every metric over the calls recorded so far; see `DEFINITIONS` (also returned).

        Returns a dict with 'regions' (per region: count, time_s_mean/p50/p95/total, flops,
        bytes_accessed, achieved_flops_per_s, mfu, busy_fraction, memory_efficiency), the
        overall achieved_flops_per_s_mean, mfu_mean, tpu_utilization_mean (+ _source),
        memory_efficiency_mean (+ _source), peak_flops_per_s (+ _source), the device,
        'reasons' (why a metric is NaN) and 'definitions'.
        """
        reasons: dict[str, str] = {}
        peak, peak_src = self.peak()
        if math.isnan(peak):
            reasons["mfu"] = peak_src
        if self._trace_error:
            reasons["busy_fraction"] = self._trace_error
        host_mem = _host_memory()
        by_name: dict[str, list[_Call]] = {}
        for c in self._calls:
            by_name.setdefault(c.name, []).append(c)
        regions = {name: _region_summary(calls, peak, host_mem)
                   for name, calls in by_name.items()}
        for name, r in regions.items():
            if math.isnan(r["flops"]):
                reasons[f"{name}/flops"] = ("no compiled executable ran through the profiler "
                                            "(wrap / region.run) and no flops= was given")
        known = [c for c in self._calls if not math.isnan(c.flops)]
        tot_time = sum(c.wall_s for c in known)
        afps_mean = sum(c.flops for c in known) / tot_time if tot_time > 0 else math.nan
        util = [_utilization(c, peak, self.trace) for c in self._calls]
        util = [u for u in util if not math.isnan(u[0])]
        mem = [_memory_efficiency(c, host_mem) for c in self._calls]
        mem = [m for m in mem if not math.isnan(m[0])]
        if not self._calls:
            reasons["all"] = "no region has been profiled yet"
        if not util:
            reasons.setdefault("tpu_utilization_mean",
                               "no call has a traced busy fraction or known flops and peak")
        if not mem:
            reasons.setdefault("memory_efficiency_mean",
                               "no device memory_stats() and no compiled memory_analysis()")
        return {
            "regions": regions,
            "achieved_flops_per_s_mean": float(afps_mean),
            "mfu_mean": float(afps_mean / peak) if not math.isnan(peak) else math.nan,
            "peak_flops_per_s": float(peak),
            "peak_flops_source": peak_src,
            "tpu_utilization_mean": float(np.mean([u for u, _ in util])) if util else math.nan,
            "tpu_utilization_source": "; ".join(sorted({s for _, s in util})) or "none",
            "memory_efficiency_mean": float(np.mean([m for m, _ in mem])) if mem else math.nan,
            "memory_efficiency_source": "; ".join(sorted({s for _, s in mem})) or "none",
            "device": f"{self.device.platform}:{self.device.device_kind}",
            "trace_dirs": list(self.trace_dirs),
            "reasons": reasons,
            "definitions": dict(DEFINITIONS),
        }

    def summary_frame(self):
        """The per-region summary as a pandas DataFrame (one row per region)."""
        return pd.DataFrame.from_dict(self.get_metrics_summary()["regions"], orient="index")
