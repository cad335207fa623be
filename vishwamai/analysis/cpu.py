"""This CPU's one measurement (peak matmul FLOP/s, streaming and matvec bandwidth), shared by
every chapter of a build: a CPU has no datasheet, so nothing about it is assumed."""
from __future__ import annotations

import functools
import json
import os
import time

from vishwamai.measure import matmul_peak, matvec_bandwidth, memory_bandwidth


def measure_cpu_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this host (jitted [n,n]@[n,n], median of `repeats`), cached
    per process; `cpu_spec` shares it between chapters."""
    return _measure_matmul(str(getattr(dtype, "name", dtype)), int(n), int(repeats))


@functools.cache
def _measure_matmul(dtype: str, n: int, repeats: int) -> float:
    return matmul_peak(dtype, n, repeats)


#: Where `cpu_spec` keeps its one measurement (env VISHWAMAI_CPU_SPEC overrides).
CPU_SPEC_PATH = os.path.join(os.path.expanduser("~"), ".cache", "vishwamai", "cpu_spec.json")
CPU_SPEC_MAX_AGE_S = 6 * 3600


def cpu_spec(path: str | None = None, *, max_age_s: float = CPU_SPEC_MAX_AGE_S) -> dict:
    """This CPU's one measurement, shared by every chapter of a build: matmul peak (FLOP/s),
    streaming bandwidth (one jitted elementwise pass) and matvec bandwidth (the rate a decode
    step's weight reads get), bytes/s.

    The first call measures and writes `path` (default `CPU_SPEC_PATH`); later calls, in this
    or another process, read it while it is younger than `max_age_s` and was taken on this
    host, so two chapters never print two peaks.
    """
    path = path or os.environ.get("VISHWAMAI_CPU_SPEC") or CPU_SPEC_PATH
    host = os.uname().nodename
    try:
        with open(path) as f:
            spec = json.load(f)
        if spec.get("host") == host and time.time() - spec.get("time", 0) < max_age_s:
            return spec
    except (OSError, ValueError):
        pass
    spec = {"peak_flops": measure_cpu_peak(), "stream_bw": memory_bandwidth(),
            "matvec_bw": matvec_bandwidth(), "host": host, "time": time.time(),
            "source": "measured: jitted float32 matmul / elementwise pass / matvec on this CPU"}
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(f"{path}.{os.getpid()}", "w") as f:
            json.dump(spec, f)
        os.replace(f"{path}.{os.getpid()}", path)
    except OSError:
        pass
    return spec
