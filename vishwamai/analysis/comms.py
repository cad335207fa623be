"""Communication as bytes and seconds, per training step and layout; pipeline bubbles.

Layouts (n devices on one axis):
- 'data': parameters replicated, batch split; the gradients are all-reduced once per step.
- 'zero1' (optimizer state sharded) and 'zero2' (optimizer state and gradients sharded): the
  gradients are reduce-scattered (each device keeps the shard it updates) and the updated
  parameters all-gathered. Same bytes on the wire as 'data' (ZeRO paper, 2 * params); the two
  differ in memory only (`zero_memory`).
- 'fsdp' (ZeRO-3): parameters, gradients and moments sharded along 'embed'. Each weight matrix
  is all-gathered before use (again in the backward pass if `regather_backward`) and its
  gradient reduce-scattered. The token embedding is the exception: it stays split along its
  width, every device looks up its slice of every token, and two all-to-alls (forward and
  backward) move the `[B/n, T, D]` activations between width- and batch-split. Norm scales are
  replicated; their gradients are all-reduced.
- 'tensor' (Megatron): heads, MLP columns and the vocabulary split, the batch whole. Per block,
  the `[B, T, D]` residual stream is all-reduced after the attention output and MLP down
  projections (forward) and after the MLP input and q/k/v projections (backward: 2 with a fused
  QKV projection, 4 with separate q, k, v as XLA compiles this package's model); plus one after
  the vocab-split embedding lookup (forward), one for the head's input gradient (backward),
  and three `[B, T]` float32 vectors for the vocab-split softmax (max, sum, target logit).

Bytes, two ways:
- `bytes`: per-device *result* bytes of each collective kind, the quantity the compiled HLO
  states (`vishwamai.sharding.collectives` / `vishwamai.measure.collectives` read the result
  shape of each instruction on one device): an all-gather's or all-reduce's result is the whole
  array, a reduce-scatter's is one shard (array / n), an all-to-all's is the local array.
- `wire`: bytes one device sends in a ring implementation, the quantity time is made of:
  all-gather and reduce-scatter (n-1)/n * A, all-reduce 2 (n-1)/n * A (a reduce-scatter then
  an all-gather), all-to-all (n-1)/n * local, for an array of A bytes in whole.
Time = wire / bandwidth, the bandwidth one direction of the chip's links: half the stated
bidirectional ICI / NVLink figure of `HARDWARE`, or the host's DCN bandwidth shared by its
chips. This assumes the ring uses all of a chip's links at once (true behind an NVSwitch; a TPU
torus axis uses two of its links, so there it is a lower bound on time) and no overlap with
compute. Only collectives whose size scales with the model or the tokens are modelled: scalars
(the loss, norms of the update) and the label gather (a few bytes) are left out.
"""
from __future__ import annotations

import math

from vishwamai.analysis.flops import flops
from vishwamai.analysis.hardware import Chip, get_chip, peak_flops
from vishwamai.analysis.memory import optimizer_bytes
from vishwamai.analysis.params import bytes_per, count_params
from vishwamai.config import ModelConfig, as_config

LAYOUTS = ("data", "zero1", "zero2", "fsdp", "tensor")
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
LINKS = ("ici", "dcn")
SCHEDULES = ("gpipe", "1f1b")


def _check_n(n) -> None:
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an int >= 1 (devices on the layout's axis); got {n!r}")


def ring_wire_bytes(kind: str, array_bytes: float, n: int) -> float:
    """Bytes one device sends for a ring collective over `n` devices.

    Args:
      kind: one of `KINDS`.
      array_bytes: A, the whole array (for 'all-to-all': the local array on one device).
      n: devices taking part.

    Returns:
      (n-1)/n * A for all-gather, reduce-scatter and all-to-all; 2 (n-1)/n * A for all-reduce.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    _check_n(n)
    f = (n - 1) / n
    return (2 * f if kind == "all-reduce" else f) * array_bytes


def _weights(c: ModelConfig) -> dict:
    """Parameter counts split the way the layouts treat them."""
    p = count_params(c)
    tables = p["embedding"] + p["positions"]
    # Every matrix but the looked-up tables (a tied head *is* the token table: then it is
    # gathered for the logits matmul and counts as a matrix).
    matrices = p["total"] - p["norms"] - (p["positions"] if c.tie_embeddings else tables)
    return {"total": p["total"], "norms": p["norms"], "tables": tables, "matrices": matrices}


def collective_bytes(cfg: ModelConfig | str, layout: str, *, n: int, batch: int, seq_len: int,
                     grad_reduction: str = "reduce-scatter", regather_backward: bool = True,
                     fused_qkv: bool = True) -> dict:
    """Bytes each collective kind moves in one training step of `layout` over `n` devices.

    Args:
      cfg: the model (parameters and gradients in `param_dtype`, activations in `dtype`).
      layout: one of `LAYOUTS` (module docstring).
      n: devices on the layout's axis.
      batch, seq_len: global batch B and sequence T of the step.
      grad_reduction: 'reduce-scatter' (what FSDP/ZeRO do on TPU and GPU) or 'all-reduce'
        (what XLA's CPU backend emits instead, then slicing: the whole gradient on every device).
      regather_backward: FSDP gathers each weight again for the backward pass (ZeRO-3, torch
        FSDP with reshard-after-forward); False when the gathered weights stay alive, as in
        the compiled single-program step XLA schedules here.
      fused_qkv: tensor parallelism all-reduces the q/k/v input gradient once (a fused QKV
        projection, or XLA summing first) rather than three times.

    Returns:
      dict: collectives {kind: {'bytes' (per-device result bytes, the HLO's measure), 'wire'
      (ring bytes one device sends)}}, bytes (sum of result bytes), wire (sum), and the args.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if grad_reduction not in ("reduce-scatter", "all-reduce"):
        raise ValueError(f"grad_reduction={grad_reduction!r} is not one of "
                         "('reduce-scatter', 'all-reduce')")
    _check_n(n)
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1; got batch={batch}, seq_len={seq_len}")
    c = as_config(cfg)
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    w = _weights(c)
    out = {k: {"bytes": 0.0, "wire": 0.0} for k in KINDS}

    def add(kind, array_bytes, *, local=False, times=1):
        result = array_bytes if kind in ("all-reduce", "all-gather") or local else array_bytes / n
        out[kind]["bytes"] += times * result
        out[kind]["wire"] += times * ring_wire_bytes(kind, array_bytes, n)

    if n > 1:
        if layout == "data":
            add("all-reduce", w["total"] * pb)
        elif layout in ("zero1", "zero2"):
            add("reduce-scatter", w["total"] * pb)
            add("all-gather", w["total"] * pb)
        elif layout == "fsdp":
            add("all-gather", w["matrices"] * pb, times=2 if regather_backward else 1)
            add(grad_reduction, w["matrices"] * pb)
            add("all-reduce", w["norms"] * pb)
            if not c.tie_embeddings:  # the width-split table: activations change hands twice
                add("all-to-all", batch / n * seq_len * c.hidden_dim * cb, local=True, times=2)
        else:  # tensor
            act = batch * seq_len * c.hidden_dim * cb
            per_layer = 2 + 1 + (1 if fused_qkv else 3)
            add("all-reduce", act, times=c.num_layers * per_layer + 2)
            add("all-reduce", batch * seq_len * 4, times=3)
    total_b = sum(v["bytes"] for v in out.values())
    total_w = sum(v["wire"] for v in out.values())
    return {"collectives": out, "bytes": total_b, "wire": total_w, "layout": layout, "n": n,
            "batch": batch, "seq_len": seq_len}


def link_bandwidth(hardware: str | Chip, link: str = "ici") -> float:
    """One-direction bytes/s per chip: ICI/NVLink (half the stated bidirectional figure) or the
    host's DCN bandwidth shared by its chips. Raises ValueError where the table has no figure."""
    if link not in LINKS:
        raise ValueError(f"link={link!r} is not one of {LINKS}")
    chip = get_chip(hardware)
    if link == "ici":
        if chip.ici_bw is None:
            raise ValueError(f"{chip.name} has no ICI/NVLink bandwidth in HARDWARE")
        return chip.ici_bw / 2
    if chip.dcn_bw is None:
        raise ValueError(f"{chip.name} has no DCN bandwidth in HARDWARE")
    return chip.dcn_bw / chip.chips_per_host


def comm_time(cfg: ModelConfig | str, layout: str, hardware: str | Chip, *, n: int, batch: int,
              seq_len: int, link: str = "ici", mfu: float = 1.0, dtype: str = "bfloat16",
              **kwargs) -> dict:
    """Communication seconds of one training step beside its compute seconds.

    Compute = model FLOPs of the step (`flops(..., mode='train')['model']`, causal-half
    attention) / (n * peak * mfu): every layout here splits the work n ways. Communication =
    `collective_bytes(...)['wire']` / `link_bandwidth`, not overlapped.

    Returns:
      dict: compute_s, comm_s, comm_by_kind_s, ratio (comm / compute), bound ('compute' |
      'communication'), wire_bytes, bandwidth, and the arguments.
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1]; got {mfu!r}")
    b = collective_bytes(cfg, layout, n=n, batch=batch, seq_len=seq_len, **kwargs)
    bw = link_bandwidth(hardware, link)
    peak = peak_flops(dtype, get_chip(hardware))[0]
    compute = flops(cfg, batch=batch, seq_len=seq_len, mode="train")["model"] / (n * peak * mfu)
    comm = b["wire"] / bw
    return {"compute_s": compute, "comm_s": comm,
            "comm_by_kind_s": {k: v["wire"] / bw for k, v in b["collectives"].items()},
            "ratio": comm / compute, "bound": "communication" if comm > compute else "compute",
            "wire_bytes": b["wire"], "bandwidth": bw, "layout": layout, "n": n, "batch": batch,
            "seq_len": seq_len, "link": link}


def critical_batch(cfg: ModelConfig | str, layout: str, hardware: str | Chip, *, n: int,
                   seq_len: int, link: str = "ici", mfu: float = 1.0, **kwargs) -> float:
    """Global batch (sequences) above which the step's compute outlasts its communication.

    Data, ZeRO and FSDP communicate a fixed amount per step while compute grows with the
    batch, so the crossover is comm_s / compute_s-per-sequence. Tensor parallelism's
    communication grows with the batch too: its ratio does not depend on the batch, and the
    answer is 0 (never communication-bound) or inf (always), decided by the model's width.
    """
    one = comm_time(cfg, layout, hardware, n=n, batch=n, seq_len=seq_len, link=link, mfu=mfu,
                    **kwargs)
    if one["comm_s"] == 0:
        return 0.0
    if layout == "tensor":
        return math.inf if one["ratio"] > 1 else 0.0
    return one["comm_s"] / (one["compute_s"] / n)


def zero_memory(cfg: ModelConfig | str, layout: str, *, n: int, optimizer: str = "adamw") -> dict:
    """Bytes per device of parameters, gradients and optimizer state under a layout.

    data: all whole; zero1: optimizer state / n; zero2: also gradients / n; fsdp (ZeRO-3):
    also parameters / n; tensor: all / n (every split dimension assumed divisible by n).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    _check_n(n)
    c = as_config(cfg)
    p = count_params(c)["total"] * bytes_per(c.param_dtype)
    o = optimizer_bytes(c, optimizer)["total"]
    split = {"data": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n), "fsdp": (n, n, n),
             "tensor": (n, n, n)}[layout]
    out = {"params": p / split[0], "grads": p / split[1], "optimizer": o / split[2]}
    out["total"] = sum(out.values())
    return out


# ============================================================================================
# pipeline and context parallelism
# ============================================================================================

def pipeline_bubble(stages: int, microbatches: int, schedule: str = "1f1b") -> float:
    """Idle fraction of a pipeline step: (p - 1) / (m + p - 1) for GPipe and for 1F1B alike.

    With p stages and m microbatches each stage is busy m (t_f + t_b) out of a step of
    (m + p - 1)(t_f + t_b): p - 1 slots of ramp-up and ramp-down. 1F1B reorders the work (one
    forward, one backward) to bound the activations in flight; it does not shrink the bubble.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if not (isinstance(stages, int) and stages >= 1 and isinstance(microbatches, int)
            and microbatches >= 1):
        raise ValueError(f"stages and microbatches must be ints >= 1; got {stages!r}, "
                         f"{microbatches!r}")
    return (stages - 1) / (microbatches + stages - 1)


def in_flight(stages: int, microbatches: int, stage: int, schedule: str = "1f1b") -> int:
    """Most microbatches whose activations stage `stage` (0 = first) holds at once.

    GPipe runs every forward before any backward: m. 1F1B starts p - stage forwards, then
    alternates one forward with one backward: min(p - stage, m).
    """
    pipeline_bubble(stages, microbatches, schedule)  # validates
    if not 0 <= stage < stages:
        raise ValueError(f"stage must be in [0, {stages}); got {stage!r}")
    if schedule == "gpipe":
        return microbatches
    return min(stages - stage, microbatches)


def pipeline_memory(cfg: ModelConfig | str, *, stages: int, microbatches: int,
                    micro_batch: int, seq_len: int, schedule: str = "1f1b",
                    activation_bytes_per_layer: float | None = None,
                    optimizer: str = "adamw") -> dict:
    """Bytes per stage of a pipeline: the first stage (embedding, most activations in flight).

    Layers split evenly (L / p per stage); parameters, gradients and optimizer state of those
    layers, plus the embedding table on the first stage. Activations: `in_flight` microbatches
    times L / p layers times `activation_bytes_per_layer` (default: the residual-stream input
    of each layer, B_micro * T * D * bytes, i.e. full rematerialisation inside a stage).
    """
    c = as_config(cfg)
    if c.num_layers % stages:
        raise ValueError(f"stages={stages} does not divide num_layers={c.num_layers}")
    pb = bytes_per(c.param_dtype)
    per_layer = count_params(c)["per_layer"]
    layers = c.num_layers // stages
    table = c.vocab_size * c.hidden_dim
    states_per_param = 2 * pb + optimizer_bytes(c, optimizer)["total"] / count_params(c)["total"]
    weights = (layers * per_layer + table) * states_per_param
    act = (activation_bytes_per_layer if activation_bytes_per_layer is not None
           else micro_batch * seq_len * c.hidden_dim * bytes_per(c.dtype))
    k = in_flight(stages, microbatches, 0, schedule)
    return {"weights_and_state": weights, "activations": k * layers * act,
            "in_flight": k, "layers_per_stage": layers,
            "total": weights + k * layers * act, "bubble": pipeline_bubble(stages, microbatches,
                                                                           schedule)}


def context_parallel(cfg: ModelConfig | str, *, cp: int, batch: int, seq_len: int) -> dict:
    """Ring attention over `cp` devices splitting the sequence: bytes and memory per device.

    Each device holds T / cp queries and passes its K and V blocks around the ring: per layer
    it receives (cp - 1)/cp of the whole K and V (forward), and in the backward pass the K, V
    blocks again plus their gradients: 3x the forward. Activations per device shrink by cp;
    weights do not (combine with FSDP for those).

    Returns: kv_bytes_per_layer (whole K and V of one layer), wire (bytes sent per step per
    device), activation_fraction (1 / cp).
    """
    _check_n(cp)
    c = as_config(cfg)
    kv = 2 * batch * seq_len * c.num_kv_heads * c.head_dim * bytes_per(c.dtype)
    wire = 3 * c.num_layers * kv * (cp - 1) / cp
    return {"kv_bytes_per_layer": kv, "wire": wire, "activation_fraction": 1 / cp, "cp": cp}
