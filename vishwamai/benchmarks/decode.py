"""Cached decode measured on this machine: per-token latency and tokens/s of `VishwamAI.generate`.

`generate` prefills the prompt and runs every new token as one step of a jitted `lax.scan`:
one program per (batch, prompt length, new tokens). A decode step's time is read as the
difference of two generations that differ only in their new tokens,
(t(2N) - t(N)) / N, timed alternately so a drifting shared machine hits both alike; prefill and
dispatch cancel out. Each repeat gives one difference; the median and p10-p90 are over repeats.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai.measure import block, count_compiles
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
