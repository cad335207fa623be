"""Ahead-of-time XLA:GPU compilation on this CPU host (`vishwamai.aot_gpu`), and the package's
kernels as the GPU compiler emits them: cuDNN flash attention and cuBLASLt fp8 GEMMs.

The compiling tests need JAX's CUDA plugin (pinned in requirements.txt) and are skipped without
it; the argument checks run everywhere. Each kernel program is compiled once per module (a
fixture per target) at small shapes.
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vishwamai import aot_gpu, bench, validate
from vishwamai.kernels.attention import attention
from vishwamai.kernels.fp8 import fp8_gemm_optimized
from vishwamai.measure import cublas_gemms, cudnn_attention, custom_calls

needs_plugin = pytest.mark.skipif(not aot_gpu.have_cuda_plugin(),
                                  reason="JAX's CUDA plugin is not installed")
TARGETS_DIR = pathlib.Path(aot_gpu.__file__).parent / "data" / "gpu_targets"
# Attention: GQA (8 query heads on 2 key/value heads), causal, bf16, head dim 64.
B, T, N, K, H = 2, 256, 8, 2, 64
# GEMM: a [M, Kd] @ b [Kd, Nd]
M, KD, ND = 256, 512, 384


# --------------------------------------------------------------------------------------------
# everywhere: targets, arguments
# --------------------------------------------------------------------------------------------

def test_shipped_targets_parse_and_carry_their_provenance():
    readme = (TARGETS_DIR / "README.md").read_text()
    assert aot_gpu.shipped_targets() == ("h100", "h200", "b200")
    for target, (name, _) in aot_gpu.TARGETS.items():
        text = (TARGETS_DIR / name).read_text()
        fields = [ln for ln in text.splitlines() if not ln.startswith("#")]
        assert not any("collective_memory_granularity" in ln for ln in fields)
        assert "openxla/xla" in text and name in readme
    # device memory as XLA's files state it (H100 80GB: 79.1 GiB usable by the driver)
    assert aot_gpu.device_memory_bytes("h100") == 84942979072
    assert aot_gpu.device_memory_bytes("h200") == 151397597184
    assert aot_gpu.device_memory_bytes("b200") == 191514411008
    assert aot_gpu.usable_bytes("h100") == pytest.approx(0.75 * 84942979072)


@pytest.mark.parametrize("call, match", [
    (lambda: aot_gpu.target_config("a100"), r"target='a100'.*\('h100', 'h200', 'b200'\)"),
    (lambda: aot_gpu.topology_name(9, 1), "gpus_per_server must be an int from 1 to 8"),
    (lambda: aot_gpu.topology_name(8, 0), "servers must be an int from 1"),
    (lambda: aot_gpu.compile_for_target("tiny", "v5e", layout="fsdp", mode="train",
                                        batch_size=8, seq_len=128), "target='v5e'"),
    (lambda: aot_gpu.compile_for_target("tiny", "h100", layout="zero", mode="train",
                                        batch_size=8, seq_len=128), "layout='zero'"),
    (lambda: aot_gpu.compile_for_target("tiny", "h100", layout="fsdp", mode="serve",
                                        batch_size=8, seq_len=128), "mode='serve'"),
    (lambda: aot_gpu.compile_for_target("tiny", "h100", layout="fsdp", mode="train",
                                        batch_size=0, seq_len=128), "batch_size"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(validate.InputError, match=match):
        call()


def test_cli_refuses_an_unknown_target(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["aot", "--platform", "cuda", "--target", "a100", "--preset", "tiny"])
    assert e.value.code == 2
    assert "'h100', 'h200', 'b200'" in capsys.readouterr().err


def test_missing_plugin_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(aot_gpu, "have_cuda_plugin", lambda: False)
    with pytest.raises(aot_gpu.CudaPluginMissingError, match="pip install.*jax-cuda12-plugin"):
        aot_gpu.require_cuda_plugin()


def test_a_platform_list_that_starts_cuda_is_explained(monkeypatch):
    if aot_gpu._nvidia_gpu_attached():
        pytest.skip("a GPU is attached: CUDA may start")
    monkeypatch.setattr(aot_gpu, "have_cuda_plugin", lambda: True)
    monkeypatch.setattr(aot_gpu, "_platforms", lambda: "cuda,cpu")
    with pytest.raises(aot_gpu.CudaPluginMissingError, match="JAX_PLATFORMS=cpu"):
        aot_gpu.require_cuda_plugin()


def test_the_readers_on_a_written_line():
    line = ('  %cublas-gemm.3 = (f32[256,384]{1,0}, s8[4194304]{0}) custom-call(%a, %b, %s, %s), '
            'custom_call_target="__cublas$lt$matmul$f8", backend_config={}')
    text = "\n".join(["  %a = f8e4m3fn[256,512]{1,0} parameter(0)",
                      "  %b = f8e4m3fn[512,384]{1,0} parameter(1)",
                      "  %s = f32[] constant(1)", line])
    assert custom_calls(text) == {"__cublas$lt$matmul$f8": 1}
    [g] = cublas_gemms(text)
    assert g == {"target": "__cublas$lt$matmul$f8", "fp8": True, "lhs": "f8e4m3fn[256,512]",
                 "rhs": "f8e4m3fn[512,384]", "scales": ["f32[]", "f32[]"],
                 "scale_values": ["1", "1"], "result": "f32[256,384]",
                 "workspace_bytes": 4194304}
    assert cudnn_attention(text) == []


# --------------------------------------------------------------------------------------------
# compiled: kernels
# --------------------------------------------------------------------------------------------

def _one_gpu(target):
    mesh = Mesh(np.array(aot_gpu.gpu_devices(target, 1, 1)[:1]), ("x",))
    return NamedSharding(mesh, P())


def _compile(target, fn, shapes, options=None):
    rep = _one_gpu(target)
    args = [jax.ShapeDtypeStruct(s, d, sharding=rep) for s, d in shapes]
    return aot_gpu.compile_for_gpus(jax.jit(fn), args, options=options).as_text()


def _attention_step(q, k, v, do):
    out, pull = jax.vjp(lambda q, k, v: attention(q, k, v, causal=True, implementation="auto"),
                        q, k, v)
    return (out,) + pull(do)


def _fp8_step(scaling):
    def step(a, b, dy):
        out, pull = jax.vjp(lambda a, b: fp8_gemm_optimized(a, b, scaling=scaling), a, b)
        return (out,) + pull(dy)
    return step


def _dense_step(x, w, dy):
    dense = nn.Dense(ND, use_bias=False, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    out, pull = jax.vjp(lambda x, w: dense.apply({"params": {"kernel": w}}, x), x, w)
    return (out,) + pull(dy)


@pytest.fixture(scope="module", params=["h100", "b200"])
def kernels(request):
    """The attention, fp8 and Dense programs (forward and backward) compiled for `target`."""
    if not aot_gpu.have_cuda_plugin():
        pytest.skip("JAX's CUDA plugin is not installed")
    target = request.param
    bf = jnp.bfloat16
    gemm_shapes = (((M, KD), bf), ((KD, ND), bf), ((M, ND), bf))
    return {"target": target,
            "attention": _compile(target, _attention_step,
                                  (((B, T, N, H), bf), ((B, T, K, H), bf), ((B, T, K, H), bf),
                                   ((B, T, N, H), bf))),
            **{f"fp8_{s}": _compile(target, _fp8_step(s), gemm_shapes, aot_gpu.CUBLAS_OPTIONS)
               for s in ("tensor", "row")},
            "dense": _compile(target, _dense_step, gemm_shapes, aot_gpu.CUBLAS_OPTIONS)}


@needs_plugin
def test_auto_attention_is_cudnn_flash_forward_and_backward(kernels):
    calls = cudnn_attention(kernels["attention"])
    assert sorted(c["target"] for c in calls) == ["__cudnn$fmhaSoftmax",
                                                  "__cudnn$fmhaSoftmaxBackward"]
    for c in calls:
        assert c["flash"] and c["mask_type"] == "CAUSAL"
        assert c["q"] == f"bf16[{B},{T},{N},{H}]"            # GQA: K/V keep their 2 heads
        assert c["k"] == c["v"] == f"bf16[{B},{T},{K},{H}]"
        assert c["workspace_bytes"] == 0                      # no cuDNN graph without a device
    bwd = next(c for c in calls if c["target"].endswith("Backward"))
    assert f"bf16[{B},{K},{T},{H}]" in bwd["outputs"]          # dK, dV for the 2 heads


@needs_plugin
@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_gemm_is_cublaslt_fp8_forward_and_backward(kernels, scaling):
    gemms = cublas_gemms(kernels[f"fp8_{scaling}"])
    assert [g["target"] for g in gemms] == ["__cublas$lt$matmul$f8"] * 3   # Y, dA, dB
    ops = sorted((g["lhs"].split("[")[0], g["rhs"].split("[")[0]) for g in gemms)
    # forward e4m3 x e4m3; backward dY in e5m2 against the forward's e4m3 operands
    assert ops == [("f8e4m3fn", "f8e4m3fn"), ("f8e4m3fn", "f8e5m2"), ("f8e5m2", "f8e4m3fn")]
    assert all(g["result"].startswith("f32") and len(g["scales"]) == 2 for g in gemms)
    # per tensor, XLA moves the first scalar scale into cuBLASLt's a-scale operand (computed in
    # the program; the other multiplies the f32 result); per row the scales are vectors,
    # applied to the f32 result after the call, and cuBLASLt's scale operands are constants 1
    expect = [None, "1"] if scaling == "tensor" else ["1", "1"]
    assert all(g["scale_values"] == expect for g in gemms)


@needs_plugin
def test_dense_baseline_is_a_bf16_cublaslt_gemm(kernels):
    gemms = cublas_gemms(kernels["dense"])
    assert len(gemms) == 3 and not any(g["fp8"] for g in gemms)
    assert all(g["lhs"].startswith("bf16") and g["rhs"].startswith("bf16") for g in gemms)


# --------------------------------------------------------------------------------------------
# compiled: rows
# --------------------------------------------------------------------------------------------

@needs_plugin
def test_a_sharded_train_step_row():
    r = aot_gpu.compile_for_target("tiny", "h100", layout="fsdp", mode="train", batch_size=8,
                                   seq_len=128, dtype="bfloat16", param_dtype="bfloat16")
    assert r["status"] == "ok" and r["chips"] == 8 and r["topology"] == "h100:1x1x8"
    assert r["peak_bytes_per_chip"] == pytest.approx(
        r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"])
    assert {"all-gather", "reduce-scatter"} <= set(r["collectives"])
    assert set(r["cudnn_attention"]) == {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"}
    assert r["versions"]["jax-cuda12-plugin"] == jax.__version__
    json.dumps(r)                                           # a row is plain data


@needs_plugin
def test_a_program_above_the_usable_memory_is_an_oom_row_on_two_servers():
    # tiny's f32 logits for 2**21 sequences of 128 tokens, split over 2 servers of 1 GPU:
    # 2**20 * 128 * 256 * 4 B = 137 GB per GPU, above the 63.7 GB JAX would give XLA on an H100
    r = aot_gpu.compile_for_target("tiny", "h100", layout="data", mode="forward",
                                   batch_size=2 ** 21, seq_len=128, gpus_per_server=1,
                                   servers=2)
    assert r["chips"] == 2 and r["topology"] == "h100:1x2x1"
    assert r["status"] == "oom" and r["needed_bytes"] > aot_gpu.usable_bytes("h100")
    assert r["output_bytes"] >= 2 ** 20 * 128 * 256 * 4


@needs_plugin
def test_cli_gives_a_row(capsys, tmp_path):
    out = tmp_path / "row.json"
    payload = bench.main(["aot", "--platform", "cuda", "--target", "b200", "--preset", "tiny",
                          "--layout", "tensor", "--mode", "decode", "--gpus", "4",
                          "--out", str(out)])
    [row] = payload["rows"]
    assert row["status"] == "ok" and row["chips"] == 4 and row["generation"] == "b200"
    assert json.loads(out.read_text())["rows"][0]["topology"] == "b200:1x1x4"
    assert "b200:1x1x4" in capsys.readouterr().out
