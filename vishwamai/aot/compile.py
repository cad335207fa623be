"""Ahead-of-time compiles for a TPU topology: the model's train step, forward pass or decode step
lowered on abstract inputs with the layout's shardings (`compile_for_topology`, one result row
per compile, an out-of-memory verdict as a row), what the HLO holds (fusions, custom calls,
splash attention, matmul operand types), the analytic point beside a row, and compiles of a
function on one chip (the fp8 GEMM on XLA:TPU).
"""
from __future__ import annotations

import functools
import math
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from vishwamai import sharding as _sh
from vishwamai import validate
from vishwamai import train as _train
from vishwamai.analysis.hardware import get_chip
from vishwamai.analysis.moe import memory_per_chip as moe_memory_per_chip
from vishwamai.analysis.roofline import memory_per_chip
from vishwamai.config import ModelConfig, as_config
from vishwamai.kernels.kernel import fp8_gemm_optimized
from vishwamai.kernels.target import compile_target
from vishwamai.measure import CompiledStats
from vishwamai.measure.buffers import read_memory_report
from vishwamai.model import VishwamAI
from vishwamai.aot.topology import (GENERATIONS, MODES, LAYOUTS, _is_oom, _one_chip,
                                    compiler_hbm_bytes, libtpu_version, parse_oom, parse_topology,
                                    require_libtpu,
                                    topology_mesh)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)


def _local_bytes(tree, shardings) -> int:
    return int(sum(np.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
                   for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def _cache_sharding(mesh, leaf, batch_size):
    """KV cache `[K*B, S, H]` (`[L, K*B, S, H]` in a scanned model; head-major `k*B + b`, see
    `kernels.decode`): the merged axis over 'tensor' (heads) and then the batch axes, each
    where it divides K or B, as the activations' heads and batch are split; indices and
    other scalars replicated."""
    if leaf.ndim not in (3, 4):
        return NamedSharding(mesh, P())
    K = leaf.shape[-3] // batch_size
    axes = []
    for names, size in ((("tensor",), K), (("data", "fsdp", "expert"), batch_size)):
        split = [a for a in names if mesh.shape.get(a, 1) > 1]
        if split and size % int(np.prod([mesh.shape[a] for a in split])) == 0:
            axes += split
    merged = tuple(axes) if axes else None
    return NamedSharding(mesh, P(*([None] * (leaf.ndim - 3)), merged, None, None))


def _lower_train(model, mesh, batch_size, seq_len):
    opt = _train.make_optimizer()
    step = _sh.make_sharded_train_step(model, opt, mesh, batch_size=batch_size)
    abstract = jax.eval_shape(functools.partial(_train.create_train_state, step.model, opt),
                              jax.random.PRNGKey(0))
    state_in = _abstract(abstract, step.state_shardings)
    batch_in = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32,
                                    sharding=step.batch_sharding)
    resident = (_local_bytes(abstract.params, step.state_shardings.params)
                + _local_bytes(abstract.opt_state, step.state_shardings.opt_state))
    return step.jitted, (state_in, batch_in), resident


def _lower_forward(model, mesh, batch_size, seq_len):
    p_sh = _sh.param_shardings(model, mesh)
    b_sh = _sh.batch_sharding(mesh, batch_size)
    spec, _ = _sh.fit_spec(("activation_batch", "activation_length", "vocab"),
                           (batch_size, seq_len, model.config.vocab_size), mesh)
    fn = jax.jit(lambda p, t: model.logits(p, t), in_shardings=(p_sh, b_sh),
                 out_shardings=NamedSharding(mesh, spec))
    params = model.abstract_params()
    args = (_abstract(params, p_sh), jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32,
                                                          sharding=b_sh))
    return fn, args, _local_bytes(params, p_sh)


def _lower_decode(model, mesh, batch_size, cache_len):
    p_sh = _sh.param_shardings(model, mesh)
    b_sh = _sh.batch_sharding(mesh, batch_size)
    cache = jax.eval_shape(lambda: model.init_cache(batch_size, cache_len))
    c_sh = jax.tree.map(lambda a: _cache_sharding(mesh, a, batch_size), cache)
    spec, _ = _sh.fit_spec(("activation_batch", "activation_length", "vocab"),
                           (batch_size, 1, model.config.vocab_size), mesh)
    fn = jax.jit(model.decode_step, in_shardings=(p_sh, c_sh, b_sh),
                 out_shardings=(NamedSharding(mesh, spec), c_sh), donate_argnums=(1,))
    params = model.abstract_params()
    args = (_abstract(params, p_sh), _abstract(cache, c_sh),
            jax.ShapeDtypeStruct((batch_size, 1), jnp.int32, sharding=b_sh))
    return fn, args, _local_bytes(params, p_sh) + _local_bytes(cache, c_sh)


def _fusions(hlo_text: str) -> int:
    """Fusion computations in a compiled HLO module (each is one kernel XLA emits)."""
    return len(re.findall(r"^\s*(?:%\S*fusion\S*|fused_computation\S*) = ", hlo_text, re.M)) or \
        hlo_text.count(" fusion(")


def _custom_calls(hlo_text: str) -> dict:
    out: dict = {}
    for target in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
        out[target] = out.get(target, 0) + 1
    return out


def _splash_in(hlo_text: str) -> bool:
    """Whether the splash-attention Pallas kernel is in the compiled program."""
    return "tpu_custom_call" in hlo_text and ("splash" in hlo_text.lower())


def model_config(config, *, attention_impl=None, remat=None, dtype=None,
                 param_dtype=None, scan_layers=None, num_layers=None) -> ModelConfig:
    """`config` resolved (`as_config`) with the overrides applied (None: keep)."""
    cfg = as_config(config)
    changes = {k: v for k, v in (("attention_impl", attention_impl), ("remat", remat),
                                 ("dtype", dtype), ("param_dtype", param_dtype),
                                 ("scan_layers", scan_layers), ("num_layers", num_layers))
               if v is not None}
    return cfg.replace(**changes) if changes else cfg


def compile_for_topology(config, topology: str, *, layout: str, mode: str, batch_size: int,
                         seq_len: int, attention_impl: str | None = None,
                         remat: str | None = None, cache_len: int | None = None,
                         dtype: str | None = None, param_dtype: str | None = None,
                         scan_layers: bool | None = True, num_layers: int | None = None,
                         expert: int = 1, hlo: bool = False, buffers: int = 0) -> dict:
    """Compiles one program for a TPU topology with XLA:TPU and reports what the compiler said.

    Args:
      config: a preset name, seed-format dict or `ModelConfig` (`config.as_config`).
      topology: e.g. 'v5e:2x2', 'v5p:4x4x4' (see `TOPOLOGY_FORM`).
      layout: 'data', 'fsdp' or 'tensor': all chips on that mesh axis (`vishwamai.sharding`).
      mode: 'train' (the AdamW train step with the state donated, tokens `[B, T+1]`),
        'forward' (logits `[B, T, V]` from tokens `[B, T]`) or 'decode' (one token per sequence,
        `[B, 1]`, against a KV cache of `cache_len` positions, the cache donated).
      batch_size, seq_len: global B and T (T is ignored for decode, except as the default
        `cache_len`).
      attention_impl, remat: override the config's attention kernel and remat policy.
      cache_len: KV cache positions for decode (default `seq_len`).
      dtype, param_dtype: override the compute and storage dtypes (e.g. 'bfloat16').
      scan_layers: run the blocks under `nn.scan` (default True: the compiler sees one block,
        so a 32-layer model compiles about as fast as a 2-layer one; memory and FLOPs are those
        of the same model); None keeps the config's choice.
      num_layers: override L (a shallow copy of a preset, for quick checks).
      expert: chips on an 'expert' mesh axis (a mixture of experts' E experts split over them,
        tokens dispatched by all-to-all, `kernels.moe_ep`); the other `chips / expert` on
        `layout`'s axis. 1: no expert axis.
      hlo: also return the compiled HLO text under 'hlo'.
      buffers: also return the compiler's `buffers` largest HBM allocations under
        'largest_buffers' (`measure.buffers`: XLA's memory-usage report, dumped into a
        temporary folder), with its 'report_total_bytes'.

    Returns:
      One row (dict): preset, topology, generation, chips, layout, mode, batch_size, seq_len,
      cache_len, dtype, param_dtype, attention_impl, remat, status ('ok' or 'oom'),
      peak_bytes_per_chip, argument/output/alias/temp bytes, resident_bytes_per_chip (the
      program's sharded inputs), hbm_bytes_per_chip (datasheet, `HARDWARE`),
      compiler_hbm_bytes_per_chip (what the compiler allows), flops_per_chip,
      bytes_accessed_per_chip, collectives ({kind: {count, bytes}}), fusions, custom_calls,
      splash (the splash kernel is in the program), compile_s, libtpu_version, jax_version;
      for 'oom': needed_bytes, needed_for, oom_message (the compiler's first line).

    Raises:
      LibtpuMissingError: libtpu is not installed.
      ValueError: a bad topology, layout, mode or size (the message names the argument).
    """
    t = parse_topology(topology)           # the arguments first, then whether libtpu is there
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}")
    validate.non_negative_int("buffers", buffers)
    validate.positive_int("expert", expert)
    if t["chips"] % expert:
        raise ValueError(f"expert={expert} must divide the {t['chips']} chips of {t['name']}")
    require_libtpu()
    cfg = model_config(config, attention_impl=attention_impl, remat=remat, dtype=dtype,
                       param_dtype=param_dtype, scan_layers=scan_layers,
                       num_layers=num_layers)
    if expert > 1 and (not cfg.num_experts or cfg.num_experts % expert):
        raise ValueError(f"expert={expert} needs a mixture of experts whose num_experts it "
                         f"divides; {cfg.name} has num_experts={cfg.num_experts}")
    cache_len = (cache_len or seq_len) if mode == "decode" else None
    if mode == "decode":
        cfg.check_seq_len(cache_len)
    else:
        cfg.check_seq_len(seq_len)
    model = VishwamAI(cfg)
    mesh = topology_mesh(t["name"], layout, expert)
    chip = get_chip(t["hardware"])
    row = {"preset": cfg.name, "topology": t["name"], "generation": t["generation"],
           "chips": t["chips"], "layout": layout, "expert_parallel": expert, "mode": mode,
           "batch_size": batch_size,
           "seq_len": seq_len, "cache_len": cache_len, "dtype": cfg.dtype,
           "param_dtype": cfg.param_dtype, "attention_impl": cfg.attention_impl,
           "remat": cfg.remat, "scan_layers": cfg.scan_layers, "num_layers": cfg.num_layers,
           "hbm_bytes_per_chip": float(chip.hbm_bytes),
           "compiler_hbm_bytes_per_chip": compiler_hbm_bytes(t["generation"]),
           "libtpu_version": libtpu_version(), "jax_version": jax.__version__}
    t0 = time.perf_counter()
    # Built outside the mesh context (abstract evaluation there would try to place constants on
    # the compile-only devices), lowered inside it so the model's logical constraints apply.
    if mode == "train":
        fn, args, resident = _lower_train(model, mesh, batch_size, seq_len)
    elif mode == "forward":
        fn, args, resident = _lower_forward(model, mesh, batch_size, seq_len)
    else:
        fn, args, resident = _lower_decode(model, mesh, batch_size, cache_len)
    row["resident_bytes_per_chip"] = resident
    dump = tempfile.TemporaryDirectory(prefix="vishwamai-xla-") if buffers else None
    options = {"xla_dump_to": dump.name, "xla_dump_hlo_pass_re": "^$"} if dump else None
    with compile_target("tpu"), _sh.mesh_context(mesh):
        try:
            compiled = fn.lower(*args).compile(compiler_options=options)
        except Exception as e:  # noqa: BLE001 - an OOM verdict is a result
            if dump is not None:
                dump.cleanup()
            if not _is_oom(e):
                raise
            row["compile_s"] = time.perf_counter() - t0
            oom = parse_oom(str(e))
            row.update(status="oom", needed_bytes=oom["needed_bytes"],
                       needed_for=oom["needed_for"], oom_message=oom["message"])
            if not math.isnan(oom["available_bytes"]):
                row["compiler_hbm_bytes_per_chip"] = oom["available_bytes"]
            return row
    row["compile_s"] = time.perf_counter() - t0
    stats = CompiledStats.of(compiled, hlo=True)
    text = compiled.as_text() or ""
    row.update(status="ok", peak_bytes_per_chip=stats.peak_bytes,
               argument_bytes=stats.argument_bytes, output_bytes=stats.output_bytes,
               alias_bytes=stats.alias_bytes, temp_bytes=stats.temp_bytes,
               flops_per_chip=stats.flops, bytes_accessed_per_chip=stats.bytes_accessed,
               collectives={k: v for k, v in stats.collectives.items() if v["count"]},
               fusions=_fusions(text), custom_calls=_custom_calls(text),
               splash=_splash_in(text),
               # whole-step figures, every while iteration counted (measure.hlo_cost)
               step_flops_per_chip=stats.step["flops"],
               step_bytes_accessed_per_chip=stats.step["bytes_accessed"],
               step_collectives={k: v for k, v in stats.step["collectives"].items()
                                 if v["count"]},
               estimated_cycles=stats.step["cycles"],
               loops=[{k: lp[k] for k in ("trip_count", "times")} for lp in stats.step["loops"]])
    if hlo:
        row["hlo"] = text
    if dump is not None:
        with dump:
            report = read_memory_report(dump.name, top=buffers)
        row.update(largest_buffers=report["buffers"], report_total_bytes=report["total_bytes"])
    return row


#: XLA:TPU tiles an array's last dimension in 128 lanes (`memory_per_chip(lanes=...)`).
TPU_LANES = 128


def analytic_point(row: dict, config=None) -> dict:
    """The package's memory model for the same point and layout as a compiled row.

    Args:
      row: a `compile_for_topology` row.
      config: the model, when `row['preset']` is not a preset name.

    Returns:
      `{'analytic_peak_bytes_per_chip', 'analytic_fits', 'analytic_parts'}`: bytes per chip
      (`analysis.roofline.memory_per_chip`) and whether they fit the compiler's usable HBM
      (the datasheet's where the compiler's is unknown).
    """
    cfg = model_config(config if config is not None else row["preset"],
                       attention_impl=row.get("attention_impl"), remat=row.get("remat"),
                       dtype=row.get("dtype"), param_dtype=row.get("param_dtype"),
                       num_layers=row.get("num_layers"), scan_layers=row.get("scan_layers"))
    kw = dict(batch=row["batch_size"], seq_len=row["seq_len"], mode=row["mode"],
              cache_len=row.get("cache_len"), lanes=TPU_LANES)
    if cfg.num_experts:           # a mixture of experts, its experts split over the expert axis
        est = moe_memory_per_chip(cfg, row["layout"], row["chips"],
                                  expert_parallel=row.get("expert_parallel", 1), **kw)
    else:
        est = memory_per_chip(cfg, row["layout"], row["chips"], **kw)
    hbm = row.get("compiler_hbm_bytes_per_chip")
    if hbm is None or (isinstance(hbm, float) and math.isnan(hbm)):
        hbm = row["hbm_bytes_per_chip"]
    return {"analytic_peak_bytes_per_chip": est["total"], "analytic_fits": est["total"] <= hbm,
            "analytic_parts": {k: v for k, v in est.items() if k != "total"}}


# ============================================================================================
# reading compiled TPU programs: matmul operand types, kernels
# ============================================================================================

_DEF_RE = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = ([\w\[\],]+)")
_DOT_RE = re.compile(r"(%[\w.\-]+) = ([\w\[\],]+)\S* (convolution|dot)\((%[\w.\-]+), (%[\w.\-]+)\)")


def matmul_operand_types(hlo_text: str) -> list[dict]:
    """Every dot / convolution in a compiled HLO module with its result and operand types.

    Returns:
      `[{'op', 'result', 'lhs', 'rhs'}]`, types as HLO prints them (e.g. 'f8e4m3fn[1024,1024]').
    """
    defs = {}
    for line in hlo_text.splitlines():
        m = _DEF_RE.match(line)
        if m:
            defs[m.group(1)] = m.group(2)
    out = []
    for line in hlo_text.splitlines():
        m = _DOT_RE.search(line)
        if m:
            out.append({"op": m.group(3), "result": m.group(2), "lhs": defs.get(m.group(4)),
                        "rhs": defs.get(m.group(5))})
    return out


def compile_on_one_chip(fn, *shapes, generation: str = "v5e"):
    """`fn` jitted and compiled by XLA:TPU for one chip of `generation`, on abstract inputs
    `shapes` (`(shape, dtype)` pairs); kernels are traced for the TPU. Returns the compiled
    executable."""
    require_libtpu()
    if generation not in GENERATIONS:
        raise ValueError(f"generation={generation!r} is not one of {tuple(GENERATIONS)}")
    rep = _one_chip(generation)
    args = [jax.ShapeDtypeStruct(s, d, sharding=rep) for s, d in shapes]
    with compile_target("tpu"):
        return jax.jit(fn, in_shardings=(rep,) * len(args), out_shardings=rep).lower(
            *args).compile()


def fp8_gemm_on_tpu(generation: str, *, M: int = 1024, K: int = 1024, N: int = 1024,
                    scaling: str = "tensor") -> dict:
    """What XLA:TPU makes of `fp8_gemm_optimized` (bf16 `[M, K] @ [K, N]`) on one chip.

    Returns:
      `{'generation', 'scaling', 'matmuls': matmul_operand_types(...), 'native_fp8'}` where
      native_fp8 says whether any matmul takes fp8 operands as such (False: the compiler
      multiplies converted values), and `'raw_fp8_dot'`: the same question for a plain
      `dot_general` of two e4m3 arrays, to tell the kernel's formulation from the chip.
    """
    c = compile_on_one_chip(lambda a, b: fp8_gemm_optimized(a, b, scaling=scaling),
                            ((M, K), jnp.bfloat16), ((K, N), jnp.bfloat16),
                            generation=generation)
    mm = matmul_operand_types(c.as_text() or "")
    raw = compile_on_one_chip(
        lambda a, b: lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32),
        ((M, K), jnp.float8_e4m3fn), ((K, N), jnp.float8_e4m3fn), generation=generation)
    raw_mm = matmul_operand_types(raw.as_text() or "")

    def fp8(ops):
        return any("f8" in (m["lhs"] or "") and "f8" in (m["rhs"] or "") for m in ops)

    return {"generation": generation, "scaling": scaling, "matmuls": mm, "native_fp8": fp8(mm),
            "raw_fp8_dot": raw_mm, "raw_fp8_native": fp8(raw_mm)}
