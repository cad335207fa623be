"""Reading `jax.profiler` traces: how much of a window the device was busy."""
from __future__ import annotations

import math

from jax.profiler import ProfileData

_CPU_NOISE = ("ThreadpoolListener", "ThunkExecutor", "end: ")


def union_length(intervals) -> float:
    """Total length covered by a set of (start, end) intervals."""
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def busy_fractions(xplane_path: str, annotations: list[str]) -> dict:
    """Device busy fraction inside each named `TraceAnnotation` window of a jax.profiler trace.

    Device planes (`/device:*`, GPU and TPU) count every op event; on CPU, where XLA runs on
    the host, the events of the XLA CPU runtime threads count (`tf_XLA*` lines, bookkeeping
    events excluded). Returns `{annotation: fraction}` for the annotations found.
    """
    pd = ProfileData.from_file(xplane_path)
    windows: dict[str, tuple[float, float]] = {}
    device_iv, cpu_iv = [], []
    for plane in pd.planes:
        is_device = plane.name.startswith("/device:")
        for line in plane.lines:
            lname = line.name or ""
            for ev in line.events:
                s, d = float(ev.start_ns), float(ev.duration_ns)
                if ev.name in annotations:
                    windows[ev.name] = (s, s + d)
                    continue
                if d <= 0:
                    continue
                if is_device and "Steps" not in lname and "Modules" not in lname:
                    device_iv.append((s, s + d))
                elif plane.name == "/host:CPU" and lname.startswith("tf_XLA") and not \
                        ev.name.startswith(_CPU_NOISE):
                    cpu_iv.append((s, s + d))
    intervals = device_iv if device_iv else cpu_iv
    out = {}
    for name, (a, b) in windows.items():
        if b <= a:
            continue
        clipped = [(max(s, a), min(e, b)) for s, e in intervals if e > a and s < b]
        out[name] = union_length(clipped) / (b - a)
    return out
