"""Serving as a roofline: prefill (compute-bound) and decode (bandwidth-bound), per chip.

Conventions:
- A step takes max(FLOPs / peak, HBM bytes / bandwidth) (as `roofline.roofline`); no overlap
  loss, no communication, no kernel-launch or host overhead: an upper bound on speed.
- Decode step (B sequences, one new token each, S cached positions): FLOPs from
  `flops.decode_flops` (every cached key visible: no causal halving); bytes = every weight
  once + the KV cache of B x S positions read + one position written per sequence + the
  logits written (f32). Weights and KV cache each have their own dtype (`weight_dtype`,
  `kv_dtype`): serving usually stores bf16 weights, and an int8 cache halves the cache bytes.
- Prefill (B prompts of T tokens): forward FLOPs with causal-half attention (`flops.flops`);
  bytes = weights once + the KV cache written. Time to first token (TTFT) = prefill time +
  one decode step.
- With `chips` > 1 the model is tensor-parallel: FLOPs, weights and the cache split evenly
  (communication not modelled); peak and bandwidth are per chip.
- `peak` / `bandwidth` override the `HARDWARE` table (on a CPU pass the measured numbers:
  `vishwamai.measure.matmul_peak`, `vishwamai.measure.memory_bandwidth`).
"""
from __future__ import annotations

import math

from vishwamai.analysis.flops import decode_flops, flops
from vishwamai.analysis.hardware import Chip, get_chip, peak_flops
from vishwamai.analysis.params import bytes_per, count_params
from vishwamai import validate
from vishwamai.config import ModelConfig, as_config


def kv_bytes_per_token(cfg: ModelConfig | str, dtype: str = "bfloat16") -> int:
    """KV cache bytes one token adds across all layers: 2 (K, V) * L * K_heads * H * bytes."""
    c = as_config(cfg)
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * bytes_per(dtype)


def kv_cache_table(cfg: ModelConfig | str) -> dict:
    """KV bytes per token with the model's own heads (GQA where K < N) and as multi-head
    (K = N), in bf16 and int8: {'gqa_bf16', 'gqa_int8', 'mha_bf16', 'mha_int8', 'ratio'}."""
    c = as_config(cfg)
    mha = c.replace(num_kv_heads=c.num_heads)
    out = {f"{name}_{dt}": kv_bytes_per_token(m, d)
           for name, m in (("gqa", c), ("mha", mha)) for dt, d in (("bf16", "bfloat16"),
                                                                   ("int8", "int8"))}
    out["ratio"] = out["mha_bf16"] / out["gqa_bf16"]
    return out


def _machine(hardware, peak, bandwidth, dtype):
    if hardware is None and (peak is None or bandwidth is None):
        raise ValueError("hardware=None needs both peak and bandwidth")
    chip = get_chip(hardware) if hardware is not None else None
    pk = peak if peak is not None else peak_flops(dtype, chip)[0]
    bw = bandwidth if bandwidth is not None else chip.hbm_bw
    return pk, bw


def _roofline(flop_count: float, hbm_bytes: float, peak: float, bw: float) -> dict:
    """`roofline.roofline` with the peak and bandwidth given (a measured CPU has no entry)."""
    compute_s, memory_s = flop_count / peak, hbm_bytes / bw
    intensity = flop_count / hbm_bytes
    return {"compute_s": compute_s, "memory_s": memory_s, "time_s": max(compute_s, memory_s),
            "intensity": intensity, "ridge": peak / bw,
            "bound": "compute" if compute_s >= memory_s else "memory", "peak": peak,
            "bandwidth": bw}


def _weights_bytes(c: ModelConfig, weight_dtype: str, gathered_rows: int | None = None) -> float:
    """Every parameter's bytes; with `gathered_rows` = B, an untied token embedding (and a
    learned position table) counts only the B rows a decode step gathers from it."""
    n = count_params(c)
    total = n["total"]
    if gathered_rows is not None:
        if not c.tie_embeddings:
            total -= n["embedding"] - gathered_rows * c.hidden_dim
        if n.get("positions"):
            total -= n["positions"] - gathered_rows * c.hidden_dim
    return total * bytes_per(weight_dtype)


def _check(batch, seq, name):
    validate.positive_int("batch", batch)
    validate.positive_int(name, seq)


def decode_step(cfg: ModelConfig | str, hardware: str | Chip | None = None, *, batch: int,
                context: int, weight_dtype: str = "bfloat16", kv_dtype: str = "bfloat16",
                chips: int = 1, peak: float | None = None, bandwidth: float | None = None,
                dtype: str = "bfloat16", gathered_embedding: bool = False) -> dict:
    """Roofline of one decode step: `batch` new tokens against `context` cached positions.

    `gathered_embedding`: count only the `batch` rows a step gathers from an untied input
    embedding (a tied one is read whole by the output head anyway), not the whole table;
    the bytes a step really must read (the default keeps the usual every-weight count).

    Returns:
      dict: flops, bytes (weights, kv_read, kv_write, logits, total), compute_s, memory_s,
      time_s (= per-token latency), tokens_per_s (batch / time_s), intensity (FLOPs/byte),
      ridge, bound, peak, bandwidth.
    """
    _check(batch, context, "context")
    c = as_config(cfg)
    pk, bw = _machine(hardware, peak, bandwidth, dtype)
    f = decode_flops(c, batch, context)["total"]
    kv = kv_bytes_per_token(c, kv_dtype)
    parts = {"weights": _weights_bytes(c, weight_dtype, batch if gathered_embedding else None),
             "kv_read": batch * context * kv,
             "kv_write": batch * kv, "logits": batch * c.vocab_size * 4}
    parts["total"] = sum(parts.values())
    r = _roofline(f / chips, parts["total"] / chips, pk, bw)
    return {"flops": f, "bytes": parts, **r, "tokens_per_s": batch / r["time_s"],
            "batch": batch, "context": context, "chips": chips}


def prefill(cfg: ModelConfig | str, hardware: str | Chip | None = None, *, batch: int,
            prompt_len: int, weight_dtype: str = "bfloat16", kv_dtype: str = "bfloat16",
            chips: int = 1, peak: float | None = None, bandwidth: float | None = None,
            dtype: str = "bfloat16") -> dict:
    """Roofline of prefilling `batch` prompts of `prompt_len` tokens (module docstring)."""
    _check(batch, prompt_len, "prompt_len")
    c = as_config(cfg)
    pk, bw = _machine(hardware, peak, bandwidth, dtype)
    f = flops(c, batch=batch, seq_len=prompt_len, mode="forward")["model"]
    parts = {"weights": _weights_bytes(c, weight_dtype),
             "kv_write": batch * prompt_len * kv_bytes_per_token(c, kv_dtype),
             "logits": batch * c.vocab_size * 4}
    parts["total"] = sum(parts.values())
    r = _roofline(f / chips, parts["total"] / chips, pk, bw)
    return {"flops": f, "bytes": parts, **r, "tokens_per_s": batch * prompt_len / r["time_s"],
            "batch": batch, "prompt_len": prompt_len, "chips": chips}


def critical_batch(cfg: ModelConfig | str, hardware: str | Chip | None = None, *,
                   context: int, weight_dtype: str = "bfloat16", kv_dtype: str = "bfloat16",
                   peak: float | None = None, bandwidth: float | None = None,
                   dtype: str = "bfloat16") -> float:
    """Batch at which a decode step turns compute-bound: FLOPs / peak = bytes / bandwidth.

    With f = FLOPs per sequence, W = weight bytes and k = bytes per sequence (its cache read
    and written, its logits): B* = W / (f * bw / peak - k). Infinite when the cache alone
    outweighs the arithmetic (long contexts: attention reads 2*K*H*S bytes per 4*N*H*S FLOPs).
    """
    _check(1, context, "context")
    c = as_config(cfg)
    pk, bw = _machine(hardware, peak, bandwidth, dtype)
    f = decode_flops(c, 1, context)["total"]
    kv = kv_bytes_per_token(c, kv_dtype)
    k = (context + 1) * kv + c.vocab_size * 4
    denom = f * bw / pk - k
    return _weights_bytes(c, weight_dtype) / denom if denom > 0 else math.inf


def latency(cfg: ModelConfig | str, hardware: str | Chip | None = None, *, batch: int = 1,
            prompt_len: int, new_tokens: int, **kwargs) -> dict:
    """Predicted time to first token, per-token latency (at the mean context) and total.

    Returns: ttft_s, per_token_s, total_s, tokens_per_s (batch * new_tokens / decode time),
    bound of the mean decode step.
    """
    _check(batch, new_tokens, "new_tokens")
    p = prefill(cfg, hardware, batch=batch, prompt_len=prompt_len, **kwargs)
    first = decode_step(cfg, hardware, batch=batch, context=prompt_len + 1, **kwargs)
    mid = decode_step(cfg, hardware, batch=batch, context=prompt_len + (new_tokens + 1) // 2,
                      **kwargs)
    decode_s = new_tokens * mid["time_s"]
    return {"ttft_s": p["time_s"] + first["time_s"], "per_token_s": mid["time_s"],
            "total_s": p["time_s"] + decode_s, "tokens_per_s": batch * new_tokens / decode_s,
            "bound": mid["bound"], "prefill_bound": p["bound"]}


def max_batch_for_latency(cfg: ModelConfig | str, hardware: str | Chip, *, context: int,
                          per_token_s: float, chips: int = 1, hbm_fraction: float = 0.9,
                          **kwargs) -> dict:
    """Largest power-of-two batch whose decode step meets `per_token_s` and whose weights and
    cache fit in `hbm_fraction` of the chips' HBM. Returns batch (0 if none), and its step."""
    chip = get_chip(hardware)
    c = as_config(cfg)
    best, step, b = 0, None, 1
    while b <= 1 << 16:
        s = decode_step(c, chip, batch=b, context=context, chips=chips, **kwargs)
        fits = s["bytes"]["weights"] + s["bytes"]["kv_read"] <= hbm_fraction * chips * chip.hbm_bytes
        if s["time_s"] > per_token_s or not fits:
            break
        best, step, b = b, s, b * 2
    return {"batch": best, "step": step}


def generate_time(cfg: ModelConfig | str, hardware: str | Chip | None = None, *, batch: int,
                  prompt_len: int, new_tokens: int, **kwargs) -> dict:
    """Predicted seconds of `VishwamAI.generate(prompt [B, T], N)` as the package runs it.

    The prompt is one prefill; the N - 1 scanned steps run through the cache's length
    buckets (`model.sampling.cache_buckets`), each step reading its whole bucket: the steps
    in a bucket of capacity C cost `decode_step` at context C. Returns prefill_s, step_s
    (the last bucket's step), bound (of that step) and total_s.
    """
    from vishwamai.model.sampling import cache_buckets
    _check(batch, new_tokens, "new_tokens")
    p = prefill(cfg, hardware, batch=batch, prompt_len=prompt_len, **kwargs)
    total, done, s = p["time_s"], 0, None
    for cap in cache_buckets(prompt_len, prompt_len + new_tokens):
        n = min(cap - prompt_len, new_tokens - 1) - done
        s = decode_step(cfg, hardware, batch=batch, context=cap, **kwargs)
        total, done = total + max(n, 0) * s["time_s"], done + max(n, 0)
    return {"prefill_s": p["time_s"], "step_s": s["time_s"], "bound": s["bound"],
            "total_s": total}


def per_token_by_difference(cfg: ModelConfig | str, hardware: str | Chip | None = None, *,
                            batch: int, prompt_len: int, new_tokens: int, **kwargs) -> dict:
    """The prediction of what `benchmarks.decode.measure_decode` measures:
    (generate_time(2N) - generate_time(N)) / N, and batch / that as tokens/s."""
    a = generate_time(cfg, hardware, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                      **kwargs)
    b = generate_time(cfg, hardware, batch=batch, prompt_len=prompt_len,
                      new_tokens=2 * new_tokens, **kwargs)
    per = (b["total_s"] - a["total_s"]) / new_tokens
    return {"per_token_s": per, "tokens_per_s": batch / per, "bound": b["bound"]}
