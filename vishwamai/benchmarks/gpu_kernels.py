"""The package's kernels as XLA:GPU compiles them for H100, H200 and B200, on a CPU host.

    python -m vishwamai.benchmarks.gpu_kernels --out book/results/gpu_kernels.json

For each target, one GPU:
- attention, a training step's forward and backward (`jax.vjp`) of one causal GQA layer in bf16
  (Llama-3-8B's heads: 32 query heads on 8 key/value heads of 128; one sequence of `T` tokens),
  with `implementation=` 'cudnn', 'flash' (the package's JAX kernel) and 'xla' (dense): the
  compiler's temporary bytes and the cuDNN calls (`measure.cudnn_attention`);
- the fp8 GEMM (`fp8_gemm_optimized`, per-tensor and per-row scales) forward and backward, with
  Triton GEMMs off (`aot_gpu.CUBLAS_OPTIONS`: cuBLASLt calls, `measure.cublas_gemms`) and on
  (XLA's default: the dots' operand types inside the GEMM fusions), beside Flax's bf16
  `nn.Dense`.
Chapters 3 and 3b read the file; nothing here runs a kernel.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vishwamai import aot, aot_gpu
from vishwamai.benchmarks import tpu_grid
from vishwamai.kernels.attention import attention
from vishwamai.kernels.fp8 import fp8_gemm_optimized
from vishwamai.measure import CompiledStats, cublas_gemms, cudnn_attention, custom_calls

ATTENTION = {"batch": 1, "seq_len": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128}
GEMM = {"M": 4096, "K": 4096, "N": 4096}
IMPLEMENTATIONS = ("cudnn", "flash", "xla")


def _compile(target, fn, shapes, options=None):
    rep = NamedSharding(Mesh(np.array(aot_gpu.gpu_devices(target, 1, 1)[:1]), ("x",)), P())
    args = [jax.ShapeDtypeStruct(s, d, sharding=rep) for s, d in shapes]
    t0 = time.perf_counter()
    compiled = aot_gpu.compile_for_gpus(jax.jit(fn), args, options=options)
    return compiled, time.perf_counter() - t0


def _vjp(f, *primal_and_cotangent):
    *primals, ct = primal_and_cotangent
    out, pull = jax.vjp(f, *primals)
    return (out,) + pull(ct)


def attention_row(target: str, impl: str, shape: dict = ATTENTION) -> dict:
    B, T, N, K, H = (shape[k] for k in ("batch", "seq_len", "heads", "kv_heads", "head_dim"))
    bf = jnp.bfloat16
    compiled, secs = _compile(
        target,
        lambda q, k, v, do: _vjp(lambda q, k, v: attention(q, k, v, causal=True,
                                                           implementation=impl), q, k, v, do),
        (((B, T, N, H), bf), ((B, T, K, H), bf), ((B, T, K, H), bf), ((B, T, N, H), bf)))
    text = compiled.as_text() or ""
    stats = CompiledStats.of(compiled)
    return {"target": target, "impl": impl, **shape, "temp_bytes": stats.temp_bytes,
            "peak_bytes": stats.peak_bytes, "custom_calls": custom_calls(text),
            "cudnn": cudnn_attention(text), "compile_s": secs}


def _fp8(scaling):
    return lambda a, b, dy: _vjp(lambda a, b: fp8_gemm_optimized(a, b, scaling=scaling), a, b, dy)


def _dense(a, b, dy):
    layer = nn.Dense(b.shape[1], use_bias=False, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    return _vjp(lambda a, b: layer.apply({"params": {"kernel": b}}, a), a, b, dy)


def gemm_rows(target: str, shape: dict = GEMM) -> list[dict]:
    M, K, N = shape["M"], shape["K"], shape["N"]
    shapes = (((M, K), jnp.bfloat16), ((K, N), jnp.bfloat16), ((M, N), jnp.bfloat16))
    rows = []
    for name, fn in (("fp8 tensor", _fp8("tensor")), ("fp8 row", _fp8("row")),
                     ("nn.Dense bf16", _dense)):
        for triton, options in (("off", aot_gpu.CUBLAS_OPTIONS), ("on", {})):
            compiled, secs = _compile(target, fn, shapes, options)
            text = compiled.as_text() or ""
            rows.append({"target": target, "variant": name, "triton_gemm": triton, **shape,
                         "gemms": cublas_gemms(text),
                         "dots": aot.matmul_operand_types(text),
                         "custom_calls": custom_calls(text),
                         "temp_bytes": CompiledStats.of(compiled).temp_bytes,
                         "compile_s": secs})
    return rows


def run(targets=tuple(aot_gpu.TARGETS), *, command: str = "") -> dict:
    aot_gpu.require_cuda_plugin()
    payload = {"benchmark": "gpu_kernels", "attention_shape": ATTENTION, "gemm_shape": GEMM,
               "provenance": {
                   "versions": aot_gpu.versions(), "command": command,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   "host": platform.machine(),
                   "note": "compiled by XLA:GPU on a CPU host (JAX_PLATFORMS=cpu); no "
                           "autotuning, no cuDNN graph build; nothing ran"},
               "attention": [], "gemm": []}
    for target in targets:
        for impl in IMPLEMENTATIONS:
            payload["attention"].append(attention_row(target, impl))
            print(f"{target} attention {impl}: temp "
                  f"{payload['attention'][-1]['temp_bytes'] / 2 ** 20:,.0f} MiB",
                  file=sys.stderr, flush=True)
        payload["gemm"] += gemm_rows(target)
        print(f"{target} GEMMs done", file=sys.stderr, flush=True)
    return payload


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vishwamai.benchmarks.gpu_kernels",
                                description="the kernels as XLA:GPU compiles them")
    p.add_argument("--out", default="book/results/gpu_kernels.json")
    args = p.parse_args(argv)
    payload = run(command="python -m vishwamai.benchmarks.gpu_kernels " + " ".join(
        sys.argv[1:] if argv is None else argv))
    tpu_grid._write(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
