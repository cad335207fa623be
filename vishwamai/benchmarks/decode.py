"""Cached decode measured on this machine: per-token latency and tokens/s, against the roofline.

Two measurements:

- `measure_decode`: `VishwamAI.generate` end to end. A decode step's time is the difference of
  two generations that differ only in their new tokens, (t(2N) - t(N)) / N, timed alternately
  so a drifting shared machine hits both alike; prefill and dispatch cancel out. Its cache
  holds T + 2N positions.
- `measure_step`: the compiled decode step itself at a given cache length S: one jitted loop of
  n or 2n steps (the trip count an argument, so one program) over a donated cache of S
  positions filled with random keys and values, the same difference. Every step attends over
  all S positions, so the roofline's context is S.

`python -m vishwamai.benchmarks.decode` sweeps `measure_step` over cache lengths and batches
(`small` and `base`), reads the memory bandwidth (`measure.matvec_bandwidth`, the rate a
matrix-vector product reads its matrix at: what a decode step's weight reads get) and the matmul
peak in the same process just before each point, and writes measured / predicted per point
(`analysis.serving.decode_step`, the roofline) with the batched-decode latency-throughput curve
beside the planner's, to `book/results/decode_roofline.json`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai.analysis import serving
from vishwamai.analysis.hardware import get_chip
from vishwamai.config import get_preset
from vishwamai.measure import block, count_compiles, env_info, matmul_peak, matvec_bandwidth
from vishwamai.model import VishwamAI


def measure_decode(model: VishwamAI, params, *, batch: int, prompt_len: int,
                   new_tokens: int = 16, repeats: int = 5) -> dict:
    """Per-token decode latency and tokens/s of `model.generate`, with spread.

    Args:
      model, params: the model and its parameters.
      batch, prompt_len: B prompts of T tokens (random token ids).
      new_tokens: N; the generations timed produce N and 2N tokens.
      repeats: timed pairs after one warm-up (compile) call of each length.

    Returns:
      dict: per_token_s {median, p10, p90}, tokens_per_s {median, p10, p90} (batch /
      per-token latency; NaN where the difference is not above zero), resolved (the median
      difference is positive: the steps outlast the timing noise), compiles (XLA compilations on the first call of each length),
      compile_s, cache_len (T + 2N: the longer program's cache), and the arguments.
    """
    if batch < 1 or prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError(f"batch, prompt_len, new_tokens and repeats must be >= 1; got "
                         f"{batch}, {prompt_len}, {new_tokens}, {repeats}")
    prompt = jax.random.randint(jax.random.PRNGKey(batch * 7919 + prompt_len), (batch, prompt_len),
                                0, model.config.vocab_size, dtype=jnp.int32)
    compiles = {}
    compile_s = 0.0
    for n in (new_tokens, 2 * new_tokens):
        with count_compiles() as c:
            block(model.generate(params, prompt, n))
        compiles[n] = c["count"]
        compile_s += c["seconds"]
    diffs = []
    for _ in range(repeats):
        t = {}
        for n in (new_tokens, 2 * new_tokens):
            t0 = time.perf_counter()
            block(model.generate(params, prompt, n))
            t[n] = time.perf_counter() - t0
        diffs.append((t[2 * new_tokens] - t[new_tokens]) / new_tokens)
    d = np.asarray(diffs)
    per = {"median": float(np.median(d)), "p10": float(np.percentile(d, 10)),
           "p90": float(np.percentile(d, 90))}
    # tokens/s is batch / latency: its p10 comes from the latency's p90 and vice versa. A
    # difference at or below zero is timing noise (a model too small for the timer): NaN.
    rate = lambda s: batch / s if s > 0 else float("nan")  # noqa: E731
    tps = {"median": rate(per["median"]), "p10": rate(per["p90"]), "p90": rate(per["p10"])}
    return {"per_token_s": per, "tokens_per_s": tps, "resolved": per["median"] > 0, "compiles": compiles,
            "compile_s": compile_s, "batch": batch, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "repeats": repeats, "cache_len": prompt_len + 2 * new_tokens}


def filled_cache(model: VishwamAI, batch: int, cache_len: int, seed: int = 0):
    """A KV cache of `cache_len` positions holding random keys and values (unit normal)."""
    cache = model.init_cache(batch, cache_len)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(cache))))
    return jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, cache)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _steps(model, params, cache, tok_B, start, n):
    """n greedy decode steps from position `start` (every cache index set to it)."""
    cache = jax.tree.map(lambda x: jnp.full_like(x, start) if x.ndim == 0 else x, cache)

    def body(_, carry):
        cache, tok_B = carry
        logits, cache = model.decode_step(params, cache, tok_B[:, None])
        return cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, tok_B))


def measure_step(model: VishwamAI, params, *, batch: int, cache_len: int, steps: int = 8,
                 repeats: int = 5) -> dict:
    """Per-token time of the compiled decode step against a cache of `cache_len` positions.

    One jitted loop runs n or 2n steps (n = `steps`) from position cache_len - 2n; the pair
    is timed alternately `repeats` times after a warm-up, each pair giving
    (t(2n) - t(n)) / n. Returns per_token_s and tokens_per_s {median, p10, p90},
    compile_s, and the arguments.
    """
    if batch < 1 or steps < 1 or repeats < 1 or cache_len < 2 * steps:
        raise ValueError(f"batch, steps, repeats >= 1 and cache_len >= 2 * steps; got {batch}, "
                         f"{steps}, {repeats}, {cache_len}")
    cache = filled_cache(model, batch, cache_len)
    tok = jnp.zeros((batch,), jnp.int32)
    start = jnp.int32(cache_len - 2 * steps)
    t0 = time.perf_counter()
    cache, tok = block(_steps(model, params, cache, tok, start, jnp.int32(steps)))
    compile_s = time.perf_counter() - t0
    cache, tok = block(_steps(model, params, cache, tok, start, jnp.int32(2 * steps)))
    diffs = []
    for _ in range(repeats):
        t = {}
        for n in (steps, 2 * steps):
            t0 = time.perf_counter()
            cache, tok = block(_steps(model, params, cache, tok, start, jnp.int32(n)))
            t[n] = time.perf_counter() - t0
        diffs.append((t[2 * steps] - t[steps]) / steps)
    per = _stats(diffs)
    rate = lambda s: batch / s if s > 0 else float("nan")  # noqa: E731
    return {"per_token_s": per, "tokens_per_s": {"median": rate(per["median"]),
                                                  "p10": rate(per["p90"]), "p90": rate(per["p10"])},
            "compile_s": compile_s, "batch": batch, "cache_len": cache_len, "steps": steps,
            "repeats": repeats}


def compiled_bytes(model: VishwamAI, *, batch: int, lengths=(64, 256)) -> dict:
    """XLA's own count of the bytes one decode step accesses (`cost_analysis`, the cache
    donated as `generate` carries it) at two cache lengths, beside the roofline's.

    Returns: compiled {S: bytes}, roofline {S: bytes} (`serving.decode_step`, every weight),
    per_position (compiled bytes added per cache position), kv_per_position (the cache's own
    bytes per position, all B sequences) and their ratio `kv_ratio`.
    """
    from vishwamai.measure import CompiledStats
    cfg = model.config
    params = model.abstract_params()
    compiled, planned = {}, {}
    for S in lengths:
        cache = jax.eval_shape(lambda S=S: model.init_cache(batch, S))
        step = jax.jit(model.decode_step, donate_argnums=(1,)).lower(
            params, cache, jax.ShapeDtypeStruct((batch, 1), jnp.int32)).compile()
        compiled[S] = CompiledStats.of(step).bytes_accessed
        planned[S] = serving.decode_step(
            cfg, None, batch=batch, context=S, weight_dtype=cfg.param_dtype,
            kv_dtype=cfg.dtype, peak=1.0, bandwidth=1.0)["bytes"]["total"]
    lo, hi = lengths[0], lengths[-1]
    per = (compiled[hi] - compiled[lo]) / (hi - lo)
    kv = batch * serving.kv_bytes_per_token(cfg, cfg.dtype)
    return {"compiled": compiled, "roofline": planned, "per_position": per,
            "kv_per_position": kv, "kv_ratio": per / kv}


def _stats(values) -> dict:
    d = np.asarray(values, float)
    return {"median": float(np.median(d)), "p10": float(np.percentile(d, 10)),
            "p90": float(np.percentile(d, 90))}


def _config(preset: str):
    return get_preset(preset).replace(dtype="float32", param_dtype="float32", dropout_rate=0.0)


def _rates(bw_repeats: int) -> tuple[float, float]:
    """(matvec bandwidth, matmul peak) read now, in this process."""
    return matvec_bandwidth(repeats=bw_repeats), matmul_peak("float32")


def predict(cfg, *, batch: int, context: int, bandwidth: float, peak: float) -> dict:
    """The roofline of one f32 decode step on this machine, the weights a step reads (an
    untied embedding: its gathered rows, `gathered_embedding`)."""
    return serving.decode_step(cfg, None, batch=batch, context=context, weight_dtype="float32",
                               kv_dtype="float32", dtype="float32", peak=peak,
                               bandwidth=bandwidth, gathered_embedding=True)


def roofline_point(model, params, *, batch, cache_len, steps, repeats, bw_repeats=5) -> dict:
    """One measured point beside its prediction, with the rates read just before it."""
    bw, peak = _rates(bw_repeats)
    m = measure_step(model, params, batch=batch, cache_len=cache_len, steps=steps,
                     repeats=repeats)
    p = predict(model.config, batch=batch, context=cache_len, bandwidth=bw, peak=peak)
    per = m["per_token_s"]
    return {"preset": model.config.name, "batch": batch, "cache_len": cache_len,
            "measured_s": per, "predicted_s": p["time_s"], "bound": p["bound"],
            "ratio": {k: v / p["time_s"] for k, v in per.items()},
            "bytes": p["bytes"], "flops": p["flops"], "bandwidth": bw, "peak": peak,
            "tokens_per_s": m["tokens_per_s"], "predicted_tokens_per_s": p["tokens_per_s"],
            "compile_s": m["compile_s"]}


def planner_curves(*, context: int, batches, chips=("h100", "tpu_v5e"),
                   preset: str = "llama3_8b") -> dict:
    """The planner's latency-throughput curve of batched decode on real chips (bf16), with the
    batch where a step turns compute-bound (`serving.critical_batch`; inf: never)."""
    out = {}
    for chip in chips:
        pts = [serving.decode_step(preset, chip, batch=b, context=context) for b in batches]
        out[chip] = {"preset": preset, "context": context, "chip": get_chip(chip).name,
                     "batch": list(batches), "per_token_s": [p["time_s"] for p in pts],
                     "tokens_per_s": [p["tokens_per_s"] for p in pts],
                     "bound": [p["bound"] for p in pts],
                     "critical_batch": serving.critical_batch(preset, chip, context=context)}
    return out


def run(presets=("small", "base"), batches=(1, 8), cache_lens=(64, 128, 256, 512, 1024, 2048),
        throughput_preset="small", throughput_batches=(1, 2, 4, 8, 16, 32, 64),
        throughput_cache=256, steps=8, repeats=5, progress=True) -> dict:
    """The whole sweep (see the module docstring); returns the JSON payload."""
    rows, curve = [], []
    for name in presets:
        model = VishwamAI(_config(name))
        params = model.init(jax.random.PRNGKey(0))
        for b in batches:
            for s in cache_lens:
                rows.append(roofline_point(model, params, batch=b, cache_len=s, steps=steps,
                                           repeats=repeats))
                if progress:
                    r = rows[-1]
                    print(f"{name} B={b} S={s}: {1e3 * r['measured_s']['median']:.2f} ms "
                          f"(p10 {1e3 * r['measured_s']['p10']:.2f}, p90 "
                          f"{1e3 * r['measured_s']['p90']:.2f}); roofline "
                          f"{1e3 * r['predicted_s']:.2f} ms; ratio {r['ratio']['median']:.2f}",
                          flush=True)
        del params
    if throughput_batches:
        model = VishwamAI(_config(throughput_preset))
        params = model.init(jax.random.PRNGKey(0))
        for b in throughput_batches:
            curve.append(roofline_point(model, params, batch=b, cache_len=throughput_cache,
                                        steps=steps, repeats=repeats))
            if progress:
                r = curve[-1]
                print(f"throughput {throughput_preset} B={b}: {r['tokens_per_s']['median']:.0f} "
                      f"tokens/s, roofline {r['predicted_tokens_per_s']:.0f}", flush=True)
    ratios = [r["ratio"]["median"] for r in rows]
    return {"env": env_info(), "command": "python -m vishwamai.benchmarks.decode",
            "settings": {"presets": list(presets), "batches": list(batches),
                         "cache_lens": list(cache_lens), "steps": steps, "repeats": repeats,
                         "dtype": "float32", "throughput_preset": throughput_preset,
                         "throughput_batches": list(throughput_batches),
                         "throughput_cache": throughput_cache},
            "method": "per-token time = (t(2n) - t(n)) / n of one jitted loop of decode steps "
                      "over a donated cache of cache_len positions, alternated; roofline = "
                      "analysis.serving.decode_step with gathered_embedding=True and the "
                      "matvec bandwidth and matmul peak read just before each point",
            "target_ratio": 1.25, "rows": rows,
            "max_ratio": max(ratios) if ratios else None,
            "throughput": {"preset": throughput_preset, "cache_len": throughput_cache,
                           "rows": curve},
            "planner": planner_curves(context=throughput_cache,
                                      batches=[2 ** i for i in range(12)])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["small", "base"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--cache-lens", nargs="+", type=int,
                    default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--throughput-batches", nargs="*", type=int,
                    default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--throughput-cache", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join("book", "results", "decode_roofline.json"))
    a = ap.parse_args(argv)
    payload = run(a.presets, a.batches, a.cache_lens, throughput_batches=a.throughput_batches,
                  throughput_cache=a.throughput_cache, steps=a.steps, repeats=a.repeats)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}; max measured / predicted {payload['max_ratio']:.2f}")
    return payload


if __name__ == "__main__":
    main()
