"""`TPUProfiler`, the seed's profiler by name: regions as `with` blocks, wrapped functions timed
per call (FLOPs from `cost_analysis()` or the caller), an optional trace whose device busy time
is read back, and the summary table with its definitions.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import math
import os
import time
from typing import Callable, Mapping

import jax
import numpy as np
import pandas as pd

from vishwamai import validate
from vishwamai.analysis.hardware import peak_flops
from vishwamai.measure import busy_fractions
from vishwamai.profiler.regions import (DEFINITIONS, Region, _Call, _Tracked, _block_all,
                                        _host_memory, _memory_efficiency, _region_summary,
                                        _utilization)


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
