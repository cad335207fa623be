"""Whole-model measurements: forward latency/throughput and training tokens/s, with MFU.

Conventions: compile measured apart, warm-up first, `block_until_ready` at both
edges, median and spread over repeats, out-of-memory recorded as a row. MFU divides *model*
FLOPs (`vishwamai.analysis.flops(...)['model']`: 2N per token forward, 6N trained, plus causal
attention; rematerialisation excluded) by the device peak. On CPU that peak is a jitted-matmul
measurement taken before and after the sweep; the higher reading is used.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vishwamai import train
from vishwamai.analysis.flops import flops as analytic_flops
from vishwamai.benchmarks import baseline
from vishwamai.benchmarks.harness import device_peak, peak_after, run_sweep
from vishwamai.config import ModelConfig, as_config, resolve_preset
from vishwamai.measure import CompiledStats, compile_time, spread, time_fn
from vishwamai.model import VishwamAI
from vishwamai.profiler import TPUProfiler
from vishwamai.transformer import create_vishwamai_transformer


def _config(preset_or_cfg, *, dtype: str | None = None, attention_impl: str | None = None,
            remat: str | None = None) -> ModelConfig:
    if isinstance(preset_or_cfg, str):
        preset_or_cfg = resolve_preset(preset_or_cfg, cpu="small")
    cfg = as_config(preset_or_cfg)
    changes = {k: v for k, v in (("dtype", dtype), ("attention_impl", attention_impl),
                                  ("remat", remat)) if v is not None}
    # Benchmarks measure the deterministic forward/backward: dropout off.
    changes["dropout_rate"] = 0.0
    return cfg.replace(**changes)


def model_flops(cfg: ModelConfig, batch: int, seq_len: int, mode: str) -> dict:
    """{'model': MFU numerator, 'hardware': HFU numerator (remat included), 'source'}."""
    r = analytic_flops(cfg, batch=batch, seq_len=seq_len, mode=mode)
    return {"model": float(r["model"]), "hardware": float(r["hardware"]),
            "source": "vishwamai.analysis.flops"}


def _tokens(cfg, batch_size, seq_len, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed + 1), (batch_size, seq_len), 0,
                              cfg.vocab_size, dtype=jnp.int32)


def _compiled_fields(compiled) -> dict:
    """The compiler's own FLOP and byte counts and footprint of one executable."""
    st = CompiledStats.of(compiled)
    return {"xla_flops": st.flops, "xla_bytes": st.bytes_accessed,
            "compiled_peak_bytes": st.peak_bytes}


def measure_forward(preset_or_cfg="small", batch_size: int = 8, seq_len: int = 256, *,
                    dtype: str | None = None, attention_impl: str | None = None,
                    warmup: int = 1, repeats: int = 5, seed: int = 0, params=None) -> dict:
    """One forward pass `tokens [B, T] -> logits [B, T, V]` (the seed's benchmark), jitted.

    Returns a row: compile_s, median/min/p10/p90 seconds, tokens_per_s (B*T / median),
    model_flops, achieved_flops_per_s (model FLOPs / median), xla_flops (the compiler's count)
    and compiled_peak_bytes.
    """
    cfg = _config(preset_or_cfg, dtype=dtype, attention_impl=attention_impl)
    model = VishwamAI(cfg)
    params = model.init(jax.random.PRNGKey(seed)) if params is None else params
    tokens = _tokens(cfg, batch_size, seq_len, seed)
    fwd = jax.jit(model.logits)
    compiled, c_s = compile_time(fwd, params, tokens)
    t = time_fn(compiled, params, tokens, warmup=warmup, repeats=repeats)
    f = model_flops(cfg, batch_size, seq_len, "forward")
    return {
        "model": cfg.name, "dtype": cfg.dtype, "attention_impl": cfg.attention_impl,
        "compile_s": c_s, "first_call_s": t["first_call_s"], "median_s": t["median_s"],
        "min_s": t["min_s"], "p10_s": t["p10_s"], "p90_s": t["p90_s"],
        "tokens_per_s": batch_size * seq_len / t["median_s"],
        "model_flops": f["model"], "achieved_flops_per_s": f["model"] / t["median_s"],
        **_compiled_fields(compiled),
    }


def measure_train(preset_or_cfg="small", batch_size: int = 8, seq_len: int = 256, *,
                  dtype: str | None = None, remat: str | None = None,
                  attention_impl: str | None = None, accum_steps: int = 1,
                  chunk_size: int | None = None, warmup: int = 1, repeats: int = 3,
                  seed: int = 0) -> dict:
    """One AdamW train step (`vishwamai.train.make_train_step`, state donated) on random tokens.

    Returns a row like `measure_forward` plus hardware_flops (remat recomputation included)
    and the final loss (a finite-number check).
    """
    cfg = _config(preset_or_cfg, dtype=dtype, attention_impl=attention_impl, remat=remat)
    opt = train.make_optimizer(warmup_steps=1, total_steps=10_000)
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    step = train.make_train_step(cfg, opt, accum_steps=accum_steps, **kw)
    state = train.create_train_state(step.model, opt, jax.random.PRNGKey(seed))
    batch = _tokens(cfg, batch_size, seq_len + 1, seed)
    compiled, c_s = compile_time(step, state, batch)
    box = {"state": state}

    def one_step():                      # the state is donated: carry it from call to call
        box["state"], box["metrics"] = compiled(box["state"], batch)
        return box["state"], box["metrics"]

    t = time_fn(one_step, warmup=warmup, repeats=repeats)
    med = t["median_s"]
    f = model_flops(cfg, batch_size, seq_len, "train")
    return {
        "model": cfg.name, "dtype": cfg.dtype, "remat": cfg.remat,
        "attention_impl": cfg.attention_impl, "accum_steps": accum_steps,
        "compile_s": c_s, "first_call_s": t["first_call_s"], "median_s": med,
        "min_s": t["min_s"], "p10_s": t["p10_s"], "p90_s": t["p90_s"],
        "tokens_per_s": batch_size * seq_len / med,
        "model_flops": f["model"], "hardware_flops": f["hardware"],
        "achieved_flops_per_s": f["model"] / med, **_compiled_fields(compiled),
        "loss": float(box["metrics"]["loss"]),
    }


def add_mfu(rows: list[dict], peak: float, source: str) -> list[dict]:
    """Adds mfu (model FLOPs / median time / peak), mfu_best (from the fastest repeat) and the
    peak's value and source to every successful row."""
    for r in rows:
        r["peak_flops_per_s"], r["peak_source"] = peak, source
        if r.get("status", "ok") == "ok" and "model_flops" in r:
            r["mfu"] = r["model_flops"] / r["median_s"] / peak
            r["mfu_best"] = r["model_flops"] / r["min_s"] / peak
    return rows


def _grid(batch_sizes: Iterable[int], seq_lens: Iterable[int], **fixed) -> list[dict]:
    return [{"batch_size": int(b), "seq_len": int(s), **fixed}
            for s in seq_lens for b in batch_sizes]


def sweep(kind: str, preset_or_cfg="small", *, batch_sizes: Sequence[int] = (8,),
          seq_lens: Sequence[int] = (256,), progress: bool = True, peak: tuple | None = None,
          **kw) -> list[dict]:
    """Runs `measure_forward` or `measure_train` over batch sizes x sequence lengths.

    Out-of-memory points become rows with status 'oom'. On CPU the matmul peak is measured
    before and after the sweep and the higher reading divides; elsewhere it is the hardware
    table's entry for the compute dtype (override with `peak=(flops_per_s, source)`).
    """
    if kind not in ("forward", "train"):
        raise ValueError(f"kind={kind!r} is not one of ('forward', 'train')")
    measure = measure_forward if kind == "forward" else measure_train
    cfg = _config(preset_or_cfg, dtype=kw.get("dtype"))
    before = peak or device_peak(cfg.dtype)

    def one(batch_size, seq_len, **extra):
        return measure(preset_or_cfg, batch_size, seq_len, **extra)

    rows = run_sweep(one, _grid(batch_sizes, seq_lens, **kw), desc=f"{kind} {cfg.name}",
                     progress=progress)
    if peak is None:
        before = peak_after(before, cfg.dtype)
    for r in rows:
        r["kind"] = kind
    return add_mfu(rows, *before)


def versus_baseline(preset_or_cfg="small", batch_size: int = 8, seq_len: int = 256, *,
                    dtype: str | None = None, kinds: Sequence[str] = ("forward", "train"),
                    repeats: int = 3, progress: bool = True, seed: int = 0) -> list[dict]:
    """`vishwamai` against `vishwamai.benchmarks.baseline` (the same model as plain Flax code),
    timed alternately in one process, so a busy machine slows both alike.

    One row per kind (forward: `tokens -> logits`; train: one AdamW step, state donated). Each
    row has the fields of `measure_forward` / `measure_train` for `vishwamai` (compile_s,
    median_s, min_s, p10_s, p90_s, tokens_per_s, model and hardware FLOPs, the compiler's cost
    and memory analysis, the loss), `mfu` and `mfu_best` as `add_mfu` computes them, and
    `baseline_compile_s`, `baseline_median_s`, `baseline_min_s`, `baseline_tokens_per_s`,
    `baseline_mfu` and `speedup` (baseline median / vishwamai median). The peak is the CPU's
    matmul peak (the higher of a reading before and after the timings) or the device table's.
    """
    for k in kinds:
        if k not in ("forward", "train"):
            raise ValueError(f"kinds must be drawn from ('forward', 'train'); got {k!r}")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an int >= 1; got {v!r}")
    cfg = _config(preset_or_cfg, dtype=dtype)
    base_model, base_params = baseline.init(cfg, jax.random.PRNGKey(seed))
    tokens = _tokens(cfg, batch_size, seq_len + 1, seed)
    runs, info = {}, {}
    if "forward" in kinds:
        model = VishwamAI(cfg)
        params = model.init(jax.random.PRNGKey(seed))
        x = tokens[:, :-1]
        fwd, c_ours = compile_time(jax.jit(model.logits), params, x)
        b_fwd, c_theirs = compile_time(baseline.make_forward(base_model), base_params, x)
        runs["forward"] = (lambda: fwd(params, x), lambda: b_fwd(base_params, x))
        info["forward"] = {"compiled": fwd, "compile_s": c_ours, "baseline_compile_s": c_theirs}
    if "train" in kinds:
        opt = train.make_optimizer(warmup_steps=1, total_steps=10_000)
        step = train.make_train_step(cfg, opt)
        box = {"state": train.create_train_state(step.model, opt, jax.random.PRNGKey(seed))}
        step_c, c_ours = compile_time(step, box["state"], tokens)
        b_opt, b_step = baseline.make_train_step(base_model)
        bbox = {"p": jax.tree.map(jnp.copy, base_params)}
        bbox["s"] = b_opt.init(bbox["p"])
        b_step_c, c_theirs = compile_time(b_step, bbox["p"], bbox["s"], tokens)

        def ours_train():
            box["state"], box["metrics"] = step_c(box["state"], tokens)
            return box["state"], box["metrics"]

        def base_train():
            bbox["p"], bbox["s"], loss = b_step_c(bbox["p"], bbox["s"], tokens)
            return bbox["p"], bbox["s"], loss

        runs["train"] = (ours_train, base_train)
        info["train"] = {"compiled": step_c, "compile_s": c_ours, "baseline_compile_s": c_theirs,
                         "box": box}
    for pair in runs.values():                      # one untimed warm call each
        for f in pair:
            jax.block_until_ready(f())
    peak = device_peak(cfg.dtype)
    times = {(k, who): [] for k in runs for who in (0, 1)}
    for _ in tqdm(range(repeats), desc=f"vishwamai vs baseline ({cfg.name})", leave=False,
                  disable=not progress):
        for k, pair in runs.items():
            for who, f in enumerate(pair):
                t0 = time.perf_counter()
                jax.block_until_ready(f())
                times[(k, who)].append(time.perf_counter() - t0)
    peak = peak_after(peak, cfg.dtype)
    rows = []
    for k in runs:
        t, tb = spread(times[(k, 0)]), spread(times[(k, 1)])
        med, med_b = t["median_s"], tb["median_s"]
        f = model_flops(cfg, batch_size, seq_len, k)
        row = {"kind": k, "model": cfg.name, "dtype": cfg.dtype, "batch_size": batch_size,
               "seq_len": seq_len, "status": "ok", "repeats": repeats,
               "compile_s": info[k]["compile_s"], "median_s": med, "min_s": t["min_s"],
               "p10_s": t["p10_s"], "p90_s": t["p90_s"],
               "tokens_per_s": batch_size * seq_len / med,
               "model_flops": f["model"], "hardware_flops": f["hardware"],
               "achieved_flops_per_s": f["model"] / med,
               **_compiled_fields(info[k]["compiled"])}
        if k == "train":
            row["loss"] = float(info[k]["box"]["metrics"]["loss"])
        add_mfu([row], *peak)
        row.update({"baseline_compile_s": info[k]["baseline_compile_s"],
                    "baseline_median_s": med_b, "baseline_min_s": tb["min_s"],
                    "baseline_tokens_per_s": batch_size * seq_len / med_b,
                    "baseline_mfu": f["model"] / med_b / peak[0], "speedup": med_b / med})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the seed's benchmark, made honest
# ---------------------------------------------------------------------------------------------

def benchmark_tpu_performance(config: Any, *, batch_size: int = 32, seq_len: int = 512,
                              repeats: int = 10, profiler=None) -> dict:
    """The seed's `benchmark_tpu_performance`, measured instead of asserted.

    As the seed: build the model from `config` (a seed-format dict, `ModelConfig` or preset
    name), warm up inside a profiler region, time `repeats` forward passes, report latency,
    throughput, utilisation and memory efficiency. Unlike the seed: the forward is jitted and
    compiled before timing, every timed call is blocked on, the latency is the median, and
    `tpu_utilization` / `memory_efficiency` come from `TPUProfiler.get_metrics_summary()`
    (model FLOPs from the analysis library, the device's peak, compiled memory), never a
    constant. A config whose `batch_size` key is set (the seed's sweep adds one) uses it.

    Returns the seed's keys (forward_latency, tokens_per_second, tpu_utilization,
    memory_efficiency) plus their sources and the profiler summary.
    """
    if isinstance(config, dict) and "batch_size" in config:
        batch_size = int(config["batch_size"])
    cfg = _config(config)
    model = create_vishwamai_transformer(cfg)
    profiler = profiler or TPUProfiler({"log_dir": None})
    x = jnp.ones((batch_size, seq_len), dtype=jnp.int32)
    # Parameters do not depend on the batch: initialise once per model, not per batch size.
    variables = _init_variables(model)
    apply = profiler.wrap(jax.jit(lambda v, x: model.apply(v, x, train=False)))
    flops = model_flops(cfg, batch_size, seq_len, "forward")["model"]
    apply.cost(variables, x)                      # compile outside every timed region
    with profiler.profile_region("warmup", flops=flops):
        apply(variables, x)
    times = []
    for _ in range(repeats):
        with profiler.profile_region("forward", flops=flops) as region:
            apply(variables, x)
        times.append(region.wall_s)
    latency = float(np.median(times))
    metrics = profiler.get_metrics_summary()
    fwd = metrics["regions"]["forward"]
    return {
        "forward_latency": latency,
        "forward_latencies": [float(t) for t in times],   # every timed call, for spread bands
        "tokens_per_second": batch_size * seq_len / latency,
        "tpu_utilization": fwd["mfu"] if math.isnan(fwd["busy_fraction"])
        else fwd["busy_fraction"],
        "tpu_utilization_source": metrics["tpu_utilization_source"],
        "memory_efficiency": fwd["memory_efficiency"],
        "memory_efficiency_source": metrics["memory_efficiency_source"],
        "batch_size": batch_size, "seq_len": seq_len, "model": cfg.name,
        "profiler_summary": metrics,
    }


_VARIABLES: dict = {}


def _init_variables(model):
    key = (type(model).__name__, as_config(model.config))
    if key not in _VARIABLES:
        _VARIABLES.clear()                       # keep one model's weights alive at most
        _VARIABLES[key] = jax.jit(model.init)(jax.random.PRNGKey(0),
                                              jnp.ones((1, 1), jnp.int32))
    return _VARIABLES[key]


def analyze_performance(config: Any, batch_sizes: Sequence[int] = (1, 8, 32, 128), *,
                        seq_len: int = 512, repeats: int = 5, progress: bool = True) -> list:
    """The seed's batch-size sweep over `benchmark_tpu_performance`; an out-of-memory batch
    size becomes a row with status 'oom' instead of ending the sweep."""
    def one(batch_size):
        perf = benchmark_tpu_performance(config, batch_size=batch_size, seq_len=seq_len,
                                         repeats=repeats)
        fwd = perf["profiler_summary"]["regions"]["forward"]
        return {"throughput": perf["tokens_per_second"], "latency": perf["forward_latency"],
                "latencies": perf["forward_latencies"],
                "efficiency": perf["tpu_utilization"],
                "memory_efficiency": perf["memory_efficiency"],
                "model_flops": fwd["flops"], "xla_bytes": fwd["bytes_accessed"],
                "achieved_flops_per_s": fwd["flops"] / perf["forward_latency"]}

    return run_sweep(one, [{"batch_size": b} for b in batch_sizes], desc="batch sizes",
                     progress=progress)
