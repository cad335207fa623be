"""Sweeps and result files shared by every benchmark (timing itself is `vishwamai.measure`).

Conventions: warm-up first, compile time measured and reported apart, `block_until_ready` at
both edges, median and spread over repeats (`vishwamai.measure.time_fn`), and an
out-of-memory failure becomes a result row instead of a crash.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pandas as pd
from tqdm import tqdm

from vishwamai.analysis.hardware import peak_flops
from vishwamai.measure import env_info, higher_peak, is_oom, matmul_peak


def device_peak(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s, source) of the first device: the hardware table on accelerators, a fresh
    measurement on CPU (not the per-process cached one: a benchmark reads it at its edges)."""
    if jax.default_backend() == "cpu":
        return matmul_peak("float32"), "measured: jitted float32 matmul on this CPU"
    return peak_flops(dtype)


def peak_after(before: tuple[float, str], dtype: str = "float32") -> tuple[float, str]:
    """The peak to divide by once a run is over: on CPU the higher of `before` and a fresh
    reading (the machine's throughput drifts while it is shared), elsewhere `before`."""
    if jax.default_backend() != "cpu":
        return before
    return higher_peak(before, device_peak(dtype))


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
    for params in tqdm(grid, desc=desc, leave=False, disable=not progress):
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
    payload = dict(payload)
    payload.setdefault("env", env_info())
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(payload), f, indent=1)
    return path
