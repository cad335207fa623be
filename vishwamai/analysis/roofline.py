"""Roofline time, ideal throughput and a fit planner, from the analytic FLOPs and bytes.

Conventions:
- A step takes at least max(FLOPs / peak, HBM bytes / bandwidth) on one chip (the roofline);
  it is compute-bound when its arithmetic intensity (FLOPs per HBM byte) exceeds the chip's
  ridge point, peak / bandwidth. Communication is not modelled.
- HBM traffic is a lower-bound estimate (`hbm_traffic`): each weight, gradient, optimizer
  moment, saved activation and cache entry crosses HBM the minimum number of times.
- Ideal tokens/s = chips * peak * MFU / (model FLOPs per token): MFU is an input, never a
  measurement here.
- The planner counts bytes per chip and says whether they fit in HBM; `headroom` is the
  fraction of HBM allowed (1.0 = all of it; runtimes reserve some).
"""
from __future__ import annotations

import math

from vishwamai.analysis.flops import decode_flops, flops
from vishwamai.analysis.hardware import Chip, get_chip, peak_flops
from vishwamai.analysis.memory import (F32, _attention_kind, activation_bytes,
                                       forward_working_set, kv_cache_bytes, optimizer_bytes,
                                       saved_per_layer)
from vishwamai.analysis.params import bytes_per, count_params
from vishwamai import validate
from vishwamai.config import ModelConfig, as_config

SHARDINGS = ("data", "fsdp", "tensor")


def roofline(flop_count: float, hbm_bytes: float, hardware: str | Chip,
             dtype: str = "bfloat16") -> dict:
    """Roofline time of `flop_count` FLOPs moving `hbm_bytes` bytes on one chip.

    Returns: compute_s, memory_s, time_s (the max), intensity (FLOPs/byte), ridge
    (peak/bandwidth), bound ('compute' | 'memory'), peak, bandwidth.
    """
    validate.non_negative("flop_count", flop_count)
    validate.non_negative("hbm_bytes", hbm_bytes)
    chip = get_chip(hardware)
    peak = peak_flops(dtype, chip)[0]
    compute_s = flop_count / peak
    memory_s = hbm_bytes / chip.hbm_bw
    intensity = flop_count / hbm_bytes if hbm_bytes else math.inf
    ridge = peak / chip.hbm_bw
    return {"compute_s": compute_s, "memory_s": memory_s, "time_s": max(compute_s, memory_s),
            "intensity": intensity, "ridge": ridge,
            "bound": "compute" if intensity >= ridge else "memory",
            "peak": peak, "bandwidth": chip.hbm_bw}


def hbm_traffic(cfg: ModelConfig | str, *, batch: int, seq_len: int, mode: str = "train",
                cache_len: int | None = None, remat: str | None = None,
                optimizer: str = "adamw") -> dict:
    """Minimum HBM bytes one step moves (see module docstring).

    mode 'train': weights read in the forward and twice in the backward (input and weight
      gradients), gradients written, the optimizer reads params/grads/state and writes
      params/state, saved activations written once and read once, logits written and read.
    mode 'prefill': weights read once, activations of one layer written and read, KV written.
    mode 'decode': weights read once, the KV cache of `cache_len` positions read, one position
      written; `batch` tokens per step.
    """
    validate.one_of("mode", mode, ("train", "prefill", "decode"))
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    if cache_len is not None:
        validate.positive_int("cache_len", cache_len)
    c = as_config(cfg)
    n = count_params(c)["total"]
    pb = bytes_per(c.param_dtype)
    cb = bytes_per(c.dtype)
    out = {"weights": 0, "gradients": 0, "optimizer": 0, "activations": 0, "kv_cache": 0}
    if mode == "train":
        act = activation_bytes(c, batch=batch, seq_len=seq_len, remat=remat)
        out["weights"] = 3 * n * pb
        out["gradients"] = n * pb
        opt = optimizer_bytes(c, optimizer)["total"]
        out["optimizer"] = 2 * n * pb + 2 * opt
        out["activations"] = 2 * act["saved"]
    elif mode == "prefill":
        out["weights"] = n * pb
        out["activations"] = 2 * forward_working_set(c, batch=batch, seq_len=seq_len)
        out["kv_cache"] = kv_cache_bytes(c, batch, seq_len)
    elif mode == "decode":
        S = seq_len if cache_len is None else cache_len
        out["weights"] = n * pb
        out["kv_cache"] = kv_cache_bytes(c, batch, S) + kv_cache_bytes(c, batch, 1)
        out["activations"] = 2 * batch * c.vocab_size * cb
    else:
        raise ValueError(f"mode={mode!r} is not one of ('train', 'prefill', 'decode')")
    out["total"] = sum(out.values())
    return out


def step_roofline(cfg: ModelConfig | str, hardware: str | Chip, *, batch: int, seq_len: int,
                  mode: str = "train", cache_len: int | None = None, remat: str | None = None,
                  dtype: str = "bfloat16") -> dict:
    """Roofline of one step on one chip: `roofline` of the step's FLOPs and `hbm_traffic`.

    'train' counts hardware FLOPs (remat recomputation included), 'prefill' the forward,
    'decode' one token per sequence against `cache_len` cached positions. Adds
    tokens_per_s = tokens in the step / time_s (the roofline's upper bound).
    """
    validate.one_of("mode", mode, ("train", "prefill", "decode"))
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    c = as_config(cfg)
    if mode == "train":
        f = flops(c, batch=batch, seq_len=seq_len, mode="train", remat=remat)["hardware"]
        tokens = batch * seq_len
    elif mode == "prefill":
        f = flops(c, batch=batch, seq_len=seq_len, mode="forward")["total"]
        tokens = batch * seq_len
    elif mode == "decode":
        S = seq_len if cache_len is None else cache_len
        f = decode_flops(c, batch, S)["total"]
        tokens = batch
    else:
        raise ValueError(f"mode={mode!r} is not one of ('train', 'prefill', 'decode')")
    traffic = hbm_traffic(c, batch=batch, seq_len=seq_len, mode=mode, cache_len=cache_len,
                          remat=remat)
    r = roofline(f, traffic["total"], hardware, dtype)
    r.update(flops=f, hbm_bytes=traffic["total"], tokens=tokens,
             tokens_per_s=tokens / r["time_s"])
    return r


def tokens_per_second(cfg: ModelConfig | str, hardware: str | Chip, *, seq_len: int,
                      chips: int = 1, mfu: float = 0.5, mode: str = "train",
                      convention: str = "causal", dtype: str = "bfloat16") -> dict:
    """Ideal tokens/s at a given MFU: chips * peak * mfu / (model FLOPs per token).

    Model FLOPs per token come from `flops` at batch 1 and this sequence length, so attention
    is counted ('train' = 3x forward; remat excluded, as MFU requires).
    """
    validate.probability("mfu", mfu)
    validate.positive_int("seq_len", seq_len)
    validate.positive_int("chips", chips)
    c = as_config(cfg)
    peak, source = peak_flops(dtype, get_chip(hardware))
    per_token = flops(c, batch=1, seq_len=seq_len, mode=mode, convention=convention,
                      remat="none")["model"] / seq_len
    return {"tokens_per_s": chips * peak * mfu / per_token, "flops_per_token": per_token,
            "peak_per_chip": peak, "chips": chips, "mfu": mfu, "source": source}


def _per_chip_batch(batch: int, ways: int) -> int:
    return -(-batch // ways)


def plan(cfg: ModelConfig | str, hardware: str | Chip, chips: int, *, batch: int,
         seq_len: int, mode: str = "train", remat: str | None = None,
         sharding: str = "fsdp", optimizer: str = "adamw", loss: str = "chunked",
         attention: str | None = None, cache_len: int | None = None,
         headroom: float = 1.0) -> dict:
    """Bytes per chip for training or serving on `chips` chips, and whether they fit.

    Args:
      cfg: the model (`param_dtype`: weights, gradients; `dtype`: activations, KV cache).
      hardware: a `HARDWARE` key or alias ('h100', 'v5e', ...).
      chips: number of chips.
      batch: global batch (sequences); seq_len: T.
      mode: 'train' or 'serve' (weights + KV cache of `cache_len` (default T) positions +
        one block's forward working set at prefill + last-position logits; no gradients or
        optimizer).
      sharding: 'data' (everything replicated, batch split), 'fsdp' (weights, gradients and
        optimizer state split over chips, batch split; one layer's weights gathered at a
        time), 'tensor' (weights and state split; batch not split; head/MLP-width activations
        and the KV cache split, the residual stream replicated).
      remat, optimizer, loss, attention: see `vishwamai.analysis.memory`. The loss defaults
        to the package's chunked loss: training memory then comes from
        `vishwamai.analysis.planner.memory` (its `loss_head` and `gather` counted in
        'workspace'); loss='full' keeps the full-vocabulary recipe. The optimizer defaults to
        mixed-precision AdamW (f32 moments and master weights); 'adamw_param_dtype' is the
        package's own (moments in the weights' dtype).
      headroom: fraction of HBM usable, in (0, 1] (1.0: all of it).

    Returns:
      dict: per_chip (bytes by part and 'total'), hbm (bytes per chip), fits (bool),
      utilisation (total / hbm), batch_per_chip, and the arguments.
    """
    validate.one_of("sharding", sharding, SHARDINGS)
    validate.one_of("mode", mode, ("train", "serve"))
    validate.positive_int("chips", chips)
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    if cache_len is not None:
        validate.positive_int("cache_len", cache_len)
    # A fraction of the chip's HBM: 1.0 allows all of it, 0.9 keeps 10% for the runtime.
    validate.in_range("headroom", headroom, 0, 1, lo_open=True)
    c = as_config(cfg)
    chip = get_chip(hardware)
    n = count_params(c)["total"]
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    shard_states = sharding in ("fsdp", "tensor")
    ways = chips if shard_states else 1
    b_chip = batch if sharding == "tensor" else _per_chip_batch(batch, chips)
    per = {"params": n * pb / ways, "grads": 0.0, "optimizer": 0.0, "activations": 0.0,
           "workspace": 0.0, "kv_cache": 0.0}
    per_layer_params = count_params(c)["per_layer"]
    gather = 2 * per_layer_params * cb if sharding == "fsdp" and chips > 1 else 0

    def split_width(d: dict) -> float:
        """Tensor parallelism: width-sharded families / chips, the residual stream whole."""
        if sharding != "tensor":
            return d["total"]
        whole = d["residual"] + d["tokens"]
        return whole + (d["total"] - whole) / chips

    if mode == "train" and loss == "chunked":
        from vishwamai.analysis.network import Mesh
        from vishwamai.analysis.planner import memory as planner_memory
        m = planner_memory(c, Mesh(**{sharding: chips}), batch=batch, seq_len=seq_len,
                           remat=c.remat if remat is None else remat,
                           attention=attention or "flash", optimizer=optimizer)
        per.update({k: m[k] for k in ("params", "grads", "optimizer", "activations")},
                   workspace=m["workspace"] + m["loss_head"] + m["gather"])
    elif mode == "train":
        per["grads"] = n * pb / ways
        per["optimizer"] = optimizer_bytes(c, optimizer)["total"] / ways
        act = activation_bytes(c, batch=b_chip, seq_len=seq_len, remat=remat,
                               attention=attention, loss=loss)
        per["activations"] = (c.num_layers * split_width(act["per_layer"]) + act["outside"])
        per["workspace"] = act["workspace"] / (chips if sharding == "tensor" else 1) + gather
    else:
        S = seq_len if cache_len is None else cache_len
        kv_ways = min(chips, c.num_kv_heads) if sharding == "tensor" else 1
        per["kv_cache"] = kv_cache_bytes(c, b_chip, S) / kv_ways
        layer = forward_working_set(c, batch=b_chip, seq_len=seq_len,
                                    attention=attention or "flash")
        if sharding == "tensor":  # the [B,T,D] tensors stay whole, the rest splits
            stream = 3 * b_chip * seq_len * c.hidden_dim * cb
            layer = stream + (layer - stream) / chips
        # Serving reads the last position's logits only (prefill), in f32.
        head = b_chip * c.vocab_size * 4
        per["workspace"] = layer + head + gather
    per["total"] = sum(per.values())
    hbm = chip.hbm_bytes
    return {"per_chip": per, "hbm": hbm, "fits": per["total"] <= headroom * hbm,
            "utilisation": per["total"] / hbm, "batch_per_chip": b_chip, "chips": chips,
            "hardware": chip.name, "sharding": sharding, "mode": mode}


def min_chips(cfg: ModelConfig | str, hardware: str | Chip, *, batch_per_chip: int = 1,
              seq_len: int, mode: str = "train", sharding: str = "fsdp",
              max_chips: int = 4096, **kwargs) -> int | None:
    """Smallest power-of-two chip count for which `plan` fits (global batch = chips *
    batch_per_chip; with 'tensor' the batch stays batch_per_chip). None if over `max_chips`."""
    chips = 1
    while chips <= max_chips:
        batch = batch_per_chip if sharding == "tensor" else batch_per_chip * chips
        if plan(cfg, hardware, chips, batch=batch, seq_len=seq_len, mode=mode,
                sharding=sharding, **kwargs)["fits"]:
            return chips
        chips *= 2
    return None


MODES_PER_CHIP = ("train", "forward", "decode")


def _split_ways(c: ModelConfig, layout: str, chips: int) -> dict:
    """How many ways each weight family is split under a named layout (a dimension that does
    not divide by the chips stays whole, as `vishwamai.sharding.fit_spec` leaves it)."""
    def ways(dim):
        return chips if dim % chips == 0 else 1

    one = dict.fromkeys(("embed", "heads", "kv_heads", "mlp", "vocab"), 1)
    if layout == "fsdp":
        return {**one, "embed": ways(c.hidden_dim)}
    if layout == "tensor":
        return {**one, "heads": ways(c.num_heads), "kv_heads": ways(c.num_kv_heads),
                "mlp": ways(c.mlp_dim), "vocab": ways(c.vocab_size)}
    return one


def sharded_param_count(cfg: ModelConfig | str, layout: str, chips: int) -> float:
    """Parameters one chip holds under a named layout: 'data' replicates, 'fsdp' splits every
    matrix along D (embed), 'tensor' splits heads, MLP columns and the vocabulary; norms stay
    whole."""
    c = as_config(cfg)
    p = count_params(c)
    w = _split_ways(c, layout, chips)
    if layout == "fsdp":
        return (p["total"] - p["norms"]) / w["embed"] + p["norms"]
    if layout == "tensor":
        return (p["embedding"] / w["vocab"] + p["head"] / w["vocab"] + p["positions"]
                + (p["attention_q"] + p["attention_o"]) / w["heads"]
                + (p["attention_k"] + p["attention_v"]) / w["kv_heads"]
                + p["mlp"] / w["mlp"] + p["norms"])
    return float(p["total"])


def memory_per_chip(cfg: ModelConfig | str, layout: str, chips: int, *, batch: int,
                    seq_len: int, mode: str = "train", cache_len: int | None = None,
                    remat: str | None = None, attention: str | None = None,
                    optimizer: str = "adamw_param_dtype", loss: str = "chunked",
                    lanes: int = 1) -> dict:
    """Bytes one chip holds at the peak of a sharded program: the analytic side of an
    ahead-of-time TPU compilation (`vishwamai.aot`), term by term.

    Args:
      cfg: the model (`param_dtype` for weights, gradients; `dtype` for activations, cache).
      layout: 'data' (all replicated, batch split), 'fsdp' (every matrix split along D, batch
        split; each layer's weights gathered whole before use), 'tensor' (heads, MLP columns and
        vocabulary split; batch whole; the residual stream replicated).
      chips: devices in the mesh.
      batch, seq_len: global B and T.
      mode: 'train' (AdamW step: weights, gradients and moments split like the weights, saved
        activations and backward workspace of the chip's batch rows, the loss's head
        gradient), 'forward' (weights, the MLP's hidden activation and the `[B, T, V]` logits
        output in the compute dtype), 'decode' (weights, the KV cache of `cache_len` positions
        (default T) and, scanned, its updated copy, and the `[B, 1, V]` logits).
      cache_len, remat, attention, optimizer, loss: see `vishwamai.analysis.memory`; the
        default optimizer is the package's own AdamW (moments in the parameter dtype).
      lanes: the target's minor tile width (128 on a TPU, whose layouts tile the last dimension
        in 128 lanes; 1: no tiling). A forward pass whose vocabulary is not a multiple of it
        computes the logits into a lane-padded buffer and copies them into the output.

    Returns:
      dict of bytes per chip: params, grads, optimizer, activations, workspace, gather (FSDP's
      gathered layer weights), loss_head (the chunked loss's f32 head-gradient accumulator and,
      under FSDP, the gathered head), kv_cache, cache_update (a scanned decode step's new
      stacked cache), logits (and, see `lanes`, the padded copy the logits are computed
      into), total.
    """
    validate.one_of("layout", layout, SHARDINGS)
    validate.one_of("mode", mode, MODES_PER_CHIP)
    validate.positive_int("chips", chips)
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    validate.positive_int("lanes", lanes)
    c = as_config(cfg)
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    n = count_params(c)["total"]
    n_chip = sharded_param_count(c, layout, chips)
    share = n_chip / n
    w = _split_ways(c, layout, chips)
    b_chip = batch if layout == "tensor" else _per_chip_batch(batch, chips)
    width = chips if layout == "tensor" else 1
    out = dict.fromkeys(("params", "grads", "optimizer", "activations", "workspace", "gather",
                         "loss_head", "kv_cache", "cache_update", "logits"), 0.0)
    out["params"] = n_chip * pb
    if layout == "fsdp" and w["embed"] > 1:
        out["gather"] = 2 * count_params(c)["per_layer"] * cb
    if mode == "train":
        out["grads"] = n_chip * pb
        out["optimizer"] = optimizer_bytes(c, optimizer)["total"] * share
        act = activation_bytes(c, batch=b_chip, seq_len=seq_len, remat=remat,
                               attention=attention, loss=loss)
        per = act["per_layer"]
        whole = per["residual"] + per["tokens"]
        out["activations"] = (c.num_layers * (whole + (per["total"] - whole) / width)
                              + act["outside"])
        # Backward workspace as XLA:TPU holds it: the block being differentiated is recomputed
        # (remat) with its elementwise work fused into the consumers, so what is live is its
        # matmul outputs (the 'dots' residual set), not every intermediate `activation_bytes`
        # counts; plus dense attention's score gradients and the loss's logits gradient.
        recompute = (saved_per_layer(c, batch=b_chip, seq_len=seq_len, remat="dots",
                                     attention=attention)["total"]
                     if (remat or c.remat) != "none" else 0)
        dense = _attention_kind(c, attention) != "flash"
        scores = 2 * F32 * b_chip * c.num_heads * seq_len * seq_len if dense else 0
        rows = seq_len if loss == "full" else min(128, seq_len)
        out["workspace"] = (recompute + scores) / width + 2 * b_chip * rows * c.vocab_size * F32 / (
            w["vocab"])
        if loss == "chunked":
            # The fused chunked loss (`train.cross_entropy_sum`) carries the head's gradient as
            # an f32 [D, V] accumulator through its scan over chunks (split like the head), and
            # under FSDP multiplies every chunk by the whole gathered head [D, V].
            head_ways = w["embed"] if layout == "fsdp" else w["vocab"]
            out["loss_head"] = c.hidden_dim * c.vocab_size * (
                F32 / head_ways + (cb if layout == "fsdp" and head_ways > 1 else 0))
    else:
        T = seq_len if mode == "forward" else 1
        S = seq_len if mode == "forward" else (cache_len or seq_len)
        # Without autodiff XLA fuses each block's elementwise work into its matmuls and streams
        # the rest; what must exist whole is the MLP's input projection [B, T, F] (2F gated)
        # before the down projection reads it. (`forward_working_set`, the unfused live set,
        # is what `plan` counts; on XLA:TPU it is several times the compiled scratch.)
        wi = 2 if c.gated_mlp else 1
        out["workspace"] = b_chip * T * wi * c.mlp_dim * cb / w["mlp"]
        out["logits"] = b_chip * T * c.vocab_size * cb / w["vocab"]
        if mode == "forward" and c.vocab_size % lanes:
            padded = -(-c.vocab_size // lanes) * lanes
            out["logits"] += b_chip * T * padded * cb / w["vocab"]
        if mode == "decode":
            out["kv_cache"] = kv_cache_bytes(c, b_chip, S) / w["kv_heads"]
            if c.scan_layers:
                # A scanned decode step writes the updated [L, ...] cache as the scan's
                # stacked output: a second buffer beside the donated one.
                out["cache_update"] = out["kv_cache"]
    out["total"] = sum(out.values())
    return out
