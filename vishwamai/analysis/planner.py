"""The planner: memory per chip, compute, communication and step time of a model on a mesh, and
the search for the best mesh. Every sizing number in the book comes from here.

Conventions:
- The config is resolved once, here (`as_config`), and passed on as a `ModelConfig`.
- Memory is the step the package runs (`vishwamai.train`): its chunked loss (logits one
  128-row chunk at a time, the head's f32 gradient accumulator), AdamW with moments in the
  parameters' dtype, the `remat` policy, flash-style attention (no [T, S] scores) unless told.
  Budget: the compiler's HBM allowance where the table has one (TPU), else the datasheet.
- Compute: model FLOPs (`flops(..., mode='train')['model']`: 6N per token plus attention
  counted for the causal half, remat excluded) / (chips x peak x `mfu`): `mfu` is the stated
  efficiency of the compute alone. Hardware FLOPs add remat's recomputation (HFU).
- Communication: every collective of the step per mesh axis and network tier
  (`vishwamai.analysis.network`); the ring/torus cost of each.
- Overlap: 'none' (step = compute + communication), 'full' (step = max of the two) or a
  fraction f of the communication hidden behind compute: step = compute + comm -
  min(f x comm, compute). A pipeline's bubble stretches compute by (m + p - 1) / m.
- Reported MFU and HFU are of the whole step (communication and bubble included), so they
  equal `mfu` only when nothing is exposed.
"""
from __future__ import annotations

import itertools

from vishwamai import validate
from vishwamai.analysis.flops import flops
from vishwamai.analysis.hardware import Chip, get_chip, peak_flops
from vishwamai.analysis.memory import (F32, _attention_kind, activation_bytes, kv_cache_bytes,
                                       optimizer_bytes, saved_per_layer)
from vishwamai.analysis.network import AXES, Mesh, axis_levels, collective_time
from vishwamai.analysis.params import bytes_per, count_params
from vishwamai.config import ModelConfig, as_config

GiB = 2**30
OVERLAPS = ("none", "full")
LOSS_CHUNK = 128


def overlap_fraction(overlap) -> float:
    """'none' -> 0, 'full' -> 1, a number in [0, 1] -> itself."""
    if isinstance(overlap, str):
        validate.one_of("overlap", overlap, OVERLAPS)
        return 0.0 if overlap == "none" else 1.0
    return validate.in_range("overlap", overlap, 0, 1)


def _mesh(mesh, chips: int | None) -> Mesh:
    if isinstance(mesh, Mesh):
        m = mesh
    elif isinstance(mesh, dict):
        m = Mesh(**mesh)
    else:
        raise validate.InputTypeError(f"mesh must be a Mesh or a dict of axis sizes; got {mesh!r}")
    if chips is not None and m.chips != chips:
        raise validate.InputError(f"mesh {m} has {m.chips} chips; chips={chips}")
    return m


def memory(c: ModelConfig, mesh: Mesh, *, batch: int, seq_len: int,
           remat: str, microbatches: int = 1, attention: str = "flash",
           optimizer: str = "adamw_param_dtype") -> dict:
    """Bytes per chip of the training step on `mesh` (module docstring), by part."""
    p = count_params(c)
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    t, f, pp = mesh.tensor, mesh.fsdp, mesh.pipeline
    params = ((p["total"] - p["norms"]) / (f * t * pp) + p["norms"] / pp)
    share = params / p["total"]
    rows = -(-batch // (mesh.replicas * microbatches))  # sequences per microbatch per chip
    in_flight = min(pp, microbatches) if pp > 1 else 1
    act = activation_bytes(c, batch=rows, seq_len=seq_len, remat=remat, attention=attention,
                           loss="chunked", chunk_size=LOSS_CHUNK)
    per = act["per_layer"]
    whole = per["residual"] + per["tokens"]
    layers = c.num_layers // pp
    out = {"params": params * pb, "grads": params * pb,
           "optimizer": optimizer_bytes(c, optimizer)["total"] * share,
           "activations": in_flight * (layers * (whole + (per["total"] - whole) / t)
                                       + act["outside"])}
    recompute = (saved_per_layer(c, batch=rows, seq_len=seq_len, remat="dots",
                                 attention=attention)["total"] if remat != "none" else 0)
    dense = _attention_kind(c, attention) != "flash"
    scores = 2 * F32 * rows * c.num_heads * seq_len ** 2 if dense else 0
    out["workspace"] = ((recompute + scores) / t
                        + 2 * rows * min(LOSS_CHUNK, seq_len) * c.vocab_size * F32 / t)
    # The chunked loss carries the head's f32 gradient [D, V] (split like the head) and, under
    # FSDP, multiplies each chunk by the whole gathered head.
    out["loss_head"] = c.hidden_dim * c.vocab_size * (F32 / (f * t) + (cb / t if f > 1 else 0))
    out["gather"] = 2 * p["per_layer"] * cb / t if f > 1 else 0.0
    out["total"] = sum(out.values())
    return out


def decode_memory(c: ModelConfig, mesh: Mesh, *, batch: int, cache_len: int) -> dict:
    """Bytes per chip of one decode step: weights (split by tensor x fsdp x pipeline), the KV
    cache of `cache_len` positions (heads split by tensor up to the KV heads, layers by
    pipeline) and, scanned, its updated copy, and the [B, 1, V] logits."""
    p = count_params(c)
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    t, pp = mesh.tensor, mesh.pipeline
    rows = -(-batch // mesh.replicas)
    kv = kv_cache_bytes(c, rows, cache_len) / (min(t, c.num_kv_heads) * pp)
    out = {"params": p["total"] * pb / (t * mesh.fsdp * pp), "kv_cache": kv,
           "cache_update": kv if c.scan_layers else 0.0,
           "logits": rows * c.vocab_size * cb / t}
    out["total"] = sum(out.values())
    return out


def collectives(c: ModelConfig, chip: Chip, mesh: Mesh, *, batch: int, seq_len: int,
                microbatches: int = 1, head_per_chunk: bool = False) -> list[dict]:
    """Every collective of one training step: axis, kind, array bytes (the whole array the
    axis shares), times per step, seconds and wire bytes per tier.

    head_per_chunk: what XLA:TPU makes of the package's chunked loss under FSDP (read off
      whole-step compiled HLO, tests/test_planner.py): the head [D, V] gathered again for every
      chunk of `LOSS_CHUNK` positions and its f32 gradient all-reduced once per chunk, instead
      of once per step. Off by default: the planner prices the loss as it should run."""
    levels = axis_levels(chip, mesh)
    p = count_params(c)
    pb, cb = bytes_per(c.param_dtype), bytes_per(c.dtype)
    t, f, pp = mesh.tensor, mesh.fsdp, mesh.pipeline
    matrices = (p["total"] - p["norms"]) * pb / pp          # one stage's weights
    rows = batch // mesh.replicas                            # sequences per chip per step
    act = rows * seq_len * c.hidden_dim * cb
    out = []

    def add(axis, kind, array, times, why):
        lv = levels[axis] if axis != "data+slices" else levels["data"] + levels["slices"]
        if not lv or array == 0:
            return
        s, wire = collective_time(kind, array, lv)
        out.append({"axis": axis, "kind": kind, "array_bytes": array, "times": times,
                    "seconds": s * times, "wire": {k: v * times for k, v in wire.items()},
                    "tiers": "+".join(x.tier for x in lv), "what": why})

    add("fsdp", "all-gather", matrices / t, 2, "weights, forward and again for the backward")
    add("fsdp", "reduce-scatter", matrices / t, 1, "weight gradients")
    add("data+slices", "all-reduce", matrices / (t * f), 1, "weight gradients of the replica")
    if head_per_chunk and f > 1:
        chunks = -(-seq_len // LOSS_CHUNK)
        head = c.hidden_dim * c.vocab_size
        add("fsdp", "all-gather", head * cb / t, chunks, "the loss's head, once per chunk")
        add("fsdp", "all-reduce", head * F32 / t, chunks, "the head's f32 gradient, per chunk")
    layers = c.num_layers // pp
    add("tensor", "all-reduce", act, 4 * layers + 2,
        "activations: attention and MLP outputs, forward and backward, and the head")
    add("pipeline", "send", 2 * act / t, 1,
        "activations forward and their gradients backward, one stage boundary")
    return out


def step(cfg, hardware: str | Chip, mesh, *, batch: int, seq_len: int, mfu: float = 0.4,
         overlap="none", remat: str | None = None, microbatches: int | None = None,
         attention: str = "flash", hbm_budget: float | None = None, dtype: str = "bfloat16",
         _c: ModelConfig | None = None) -> dict:
    """One training step of `cfg` on `mesh`: memory, compute, communication, step time.

    Args:
      cfg: the model (resolved once here). hardware: a `HARDWARE` key or alias.
      mesh: a `Mesh` or a dict of axis sizes. batch, seq_len: global sequences and length.
      mfu: efficiency of the compute alone (module docstring). overlap: 'none', 'full' or a
        fraction. remat: a policy (default the config's). microbatches: pipeline microbatches
        (default: one sequence per chip each). hbm_budget: bytes per chip (default the
        compiler's allowance, else the datasheet).

    Returns:
      dict: mesh, memory (bytes by part), budget, fits, lacks (bytes short, 0 if it fits),
      compute_s, comm_s, comm (list of collectives), comm_by_tier_s, bubble, exposed_comm_s,
      step_s, tokens_per_s_per_chip, mfu, hfu, and the settings (overlap, mfu_assumed, ...).
    """
    c = _c if _c is not None else as_config(cfg)
    chip = get_chip(hardware)
    m = _mesh(mesh, None)
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    validate.in_range("mfu", mfu, 0, 1, lo_open=True)
    ov = overlap_fraction(overlap)
    remat = c.remat if remat is None else remat
    if batch % m.replicas:
        raise validate.InputError(f"batch={batch} does not split over {m.replicas} replicas "
                                  f"(data x fsdp x slices of {m})")
    per_replica = batch // m.replicas
    mb = microbatches or per_replica
    if per_replica % mb:
        raise validate.InputError(f"microbatches={mb} does not divide {per_replica} sequences")
    if c.num_layers % m.pipeline:
        raise validate.InputError(f"pipeline={m.pipeline} does not divide {c.num_layers} layers")
    if c.num_heads % m.tensor or c.mlp_dim % m.tensor:
        raise validate.InputError(f"tensor={m.tensor} does not divide the {c.num_heads} heads "
                                  f"and the MLP width {c.mlp_dim}")
    mem = memory(c, m, batch=batch, seq_len=seq_len, remat=remat, microbatches=mb,
                 attention=attention)
    budget = hbm_budget or chip.compiler_hbm_bytes or chip.hbm_bytes
    peak = peak_flops(dtype, chip)[0]
    fl = flops(c, batch=batch, seq_len=seq_len, mode="train", remat=remat)
    bubble = (m.pipeline - 1) / (mb + m.pipeline - 1)
    compute = fl["model"] / (m.chips * peak * mfu) / (1 - bubble)
    comm = collectives(c, chip, m, batch=batch, seq_len=seq_len, microbatches=mb)
    comm_s = sum(x["seconds"] for x in comm)
    by_tier: dict[str, float] = {}
    for x in comm:
        by_tier[x["tiers"]] = by_tier.get(x["tiers"], 0.0) + x["seconds"]
    step_s = compute + comm_s - min(ov * comm_s, compute)
    return {"mesh": m, "hardware": chip.name, "memory": mem, "budget": budget,
            "fits": mem["total"] <= budget, "lacks": max(0.0, mem["total"] - budget),
            "compute_s": compute, "comm_s": comm_s, "comm": comm, "comm_by_tier_s": by_tier,
            "bubble": bubble, "exposed_comm_s": step_s - compute, "step_s": step_s,
            "tokens_per_s_per_chip": batch * seq_len / step_s / m.chips,
            "mfu": fl["model"] / (m.chips * peak * step_s),
            "hfu": fl["hardware"] / (m.chips * peak * step_s),
            "mfu_assumed": mfu, "overlap": overlap, "remat": remat, "batch": batch,
            "seq_len": seq_len, "microbatches": mb, "flops_convention": "causal-half, model"}


def meshes(c: ModelConfig, chip: Chip, chips: int, *, slices: int = 1,
           pipeline=(1,)) -> list[Mesh]:
    """Every power-of-two data x fsdp x tensor (x pipeline) mesh of `chips` chips whose tensor
    axis divides the heads and the MLP width and whose pipeline divides the layers."""
    out = []
    per = chips // slices
    for pp in pipeline:
        for t in (2 ** i for i in range(0, per.bit_length())):
            if per % (t * pp) or c.num_heads % t or c.mlp_dim % t or c.num_layers % pp:
                continue
            rest = per // (t * pp)
            for f in (2 ** i for i in range(0, rest.bit_length())):
                if rest % f == 0:
                    out.append(Mesh(data=rest // f, fsdp=f, tensor=t, pipeline=pp,
                                    slices=slices))
    return out


def plan(cfg, hardware: str | Chip, chips: int, *, seq_len: int, batch: int | None = None,
         mfu: float = 0.4, overlap="none", remats=("none", "full"), slices: int = 1,
         pipeline=(1,), hbm_budget: float | None = None, attention: str = "flash") -> dict:
    """The best mesh for `cfg` on `chips` chips, how fast, and why the others lose.

    Tries every mesh of `meshes` under each remat policy in `remats`; a setting that does not
    fit in the budget, or does not split the batch, loses with that reason; of those that fit
    the fastest step wins (ties: less memory). Default batch: one sequence per chip.

    Returns:
      dict: best (the `step` dict of the winner), candidates (every setting: mesh, remat,
      fits, step_s, tokens_per_s_per_chip, total_gib, reason), and the question's settings.
    """
    c = as_config(cfg)
    chip = get_chip(hardware)
    validate.positive_int("chips", chips)
    batch = chips if batch is None else batch
    rows = []
    for m, r in itertools.product(meshes(c, chip, chips, slices=slices, pipeline=pipeline),
                                  remats):
        try:
            s = step(c, chip, m, batch=batch, seq_len=seq_len, mfu=mfu, overlap=overlap,
                     remat=r, hbm_budget=hbm_budget, attention=attention, _c=c)
        except validate.InputError as e:
            rows.append({"mesh": m, "remat": r, "fits": False, "step": None, "reason": str(e)})
            continue
        rows.append({"mesh": m, "remat": r, "fits": s["fits"], "step": s, "reason": ""})
    ok = [x for x in rows if x["fits"]]
    best = min(ok, key=lambda x: (x["step"]["step_s"], x["step"]["memory"]["total"]),
               default=None)
    for x in rows:
        s = x["step"]
        if s is None:
            continue
        if not s["fits"]:
            x["reason"] = (f"does not fit: {s['memory']['total'] / GiB:.1f} GiB of "
                           f"{s['budget'] / GiB:.1f} GiB, lacks {s['lacks'] / GiB:.1f} GiB")
        elif x is not best:
            worst = max(s["comm"], key=lambda k: k["seconds"], default=None)
            x["reason"] = (f"slower: {s['step_s']:.3f} s vs {best['step']['step_s']:.3f} s"
                           + (f"; most time in {worst['kind']} over {worst['axis']} "
                              f"({worst['tiers']}, {worst['seconds']:.3f} s)" if worst else ""))
    cands = [{"mesh": str(x["mesh"]), "remat": x["remat"], "fits": x["fits"],
              "step_s": x["step"]["step_s"] if x["step"] else None,
              "tokens_per_s_per_chip": x["step"]["tokens_per_s_per_chip"] if x["step"] else None,
              "total_gib": x["step"]["memory"]["total"] / GiB if x["step"] else None,
              "reason": x["reason"] or "best"} for x in rows]
    cands.sort(key=lambda d: (not d["fits"], d["step_s"] if d["step_s"] else float("inf")))
    return {"best": best["step"] if best else None, "candidates": cands, "chips": chips,
            "hardware": chip.name, "seq_len": seq_len, "batch": batch, "mfu_assumed": mfu,
            "overlap": overlap}


def training_run(cfg, hardware: str | Chip, mesh, *, tokens: float, batch: int, seq_len: int,
                 **kwargs) -> dict:
    """A whole run of `tokens` training tokens: `step` plus steps, days and chip-hours."""
    validate.in_range("tokens", tokens, 0, None, lo_open=True)
    s = step(cfg, hardware, mesh, batch=batch, seq_len=seq_len, **kwargs)
    steps = tokens / (batch * seq_len)
    days = steps * s["step_s"] / 86400
    return {**s, "steps": steps, "days": days, "chip_hours": days * 24 * s["mesh"].chips}
