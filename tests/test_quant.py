"""Weight-only int8 / fp8: quantization error bounds, the kernel against its plain reference, the
quantized model against its float original, the compiled decode step's bytes, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai import quant, validate
from vishwamai.config import ModelConfig
from vishwamai.kernels.quant import (dequantize_weight, quantize_weight, quantized_matmul,
                                     quantized_matmul_reference)
from vishwamai.model import VishwamAI

# A config whose decode step reads mostly projection kernels (so the bytes ratio shows), small
# enough to compile in seconds.
MID = ModelConfig(vocab_size=4096, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                  hidden_dim=256, mlp_dim=704, max_seq_len=128, mlp_activation="swiglu",
                  norm="rmsnorm", position="rope", tie_embeddings=False, name="mid")


def _w(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape) * jnp.linspace(0.01, 3.0, shape[-1])


@pytest.mark.parametrize("in_axes, shape", [((0,), (64, 4, 16)), ((0, 1), (4, 16, 64)),
                                            ((1,), (3, 64, 32))])
def test_int8_error_at_most_half_a_step_per_channel(in_axes, shape):
    w = _w(shape)
    q, s = quantize_weight(w, in_axes, "int8")
    assert q.dtype == jnp.int8 and s.dtype == jnp.float32
    assert all(s.shape[a] == 1 for a in in_axes) and s.ndim == w.ndim
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32)))) == 127   # each channel's max hits 127
    err = jnp.abs(dequantize_weight(q, s) - w)
    assert bool(jnp.all(err <= s / 2 * (1 + 1e-6)))             # round to nearest: half a step


def test_fp8_error_within_e4m3_rounding():
    w = _w((128, 48))
    q, s = quantize_weight(w, (0,), "fp8")
    assert q.dtype == jnp.float8_e4m3fn
    err = jnp.abs(dequantize_weight(q, s) - w)
    # e4m3: 3 mantissa bits, so a normal value rounds within 2^-4 of itself; below the smallest
    # normal (2^-6 of the scale) the step is the subnormal's, 2^-9 of the scale.
    assert bool(jnp.all(err <= 2.0 ** -4 * jnp.abs(w) + s * 2.0 ** -10 + 1e-12))


def test_zero_channel_gets_unit_scale():
    w = jnp.zeros((8, 3)).at[:, 1].set(1.0)
    q, s = quantize_weight(w, (0,))
    assert s[0, 0] == 1.0 and s[0, 1] == pytest.approx(1 / 127) and int(q[:, 0].sum()) == 0


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("blocked, block_k, M", [(True, None, 1), (True, 16, 8), (False, None, 8),
                                                  (True, 256, 3), (None, None, 100)])
def test_kernel_matches_reference(mode, blocked, block_k, M):
    K, N = 256, 384
    q, s = quantize_weight(_w((K, N), 1), (0,), mode)
    x = jax.random.normal(jax.random.PRNGKey(2), (M, K))
    got = quantized_matmul(x, q, s, blocked=blocked, block_k=block_k)
    want = quantized_matmul_reference(x, q, s)
    # f32 sums in another order: relative 1e-5 of the output's scale.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_kernel_under_jit_and_bf16():
    q, s = quantize_weight(_w((64, 32)), (0,))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 64))
    got = jax.jit(lambda x: quantized_matmul(x, q, s, out_dtype=jnp.bfloat16))(x)
    assert got.dtype == jnp.bfloat16
    want = quantized_matmul_reference(x, q, s)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2,
                               atol=2e-2 * float(jnp.max(jnp.abs(want))))


@pytest.fixture(scope="module")
def tiny():
    model = VishwamAI("tiny")
    return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_model_is_its_dequantized_float_model(tiny, mode):
    model, params = tiny
    qmodel, qparams = quant.quantize(model, params, mode)
    assert qmodel.config.weight_quant == mode
    flat = jax.tree_util.tree_leaves_with_path(qparams)
    kernels = [x for p, x in flat if getattr(p[-1], "key", "") == "kernel"]
    assert kernels and all(x.dtype.itemsize == 1 for x in kernels)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, 256)
    got = qmodel.logits(qparams, tokens)
    fmodel, fparams = quant.dequantize(qmodel, qparams)
    # Same weights, the scale applied after the dot instead of before: f32 rounding only.
    np.testing.assert_allclose(got, fmodel.logits(fparams, tokens), rtol=1e-5, atol=1e-5)
    # Against the original float weights: within 5% (int8) / 15% (fp8) of the logits' range.
    ref = model.logits(params, tokens)
    tol = {"int8": 0.05, "fp8": 0.15}[mode]
    assert float(jnp.max(jnp.abs(got - ref))) <= tol * float(jnp.max(jnp.abs(ref)))


def test_quantized_generate_and_scanned_layers(tiny):
    model, params = tiny
    qmodel, qparams = quant.quantize(model, params)
    prompt = jax.random.randint(jax.random.PRNGKey(4), (2, 6), 0, 256)
    out = qmodel.generate(qparams, prompt, 5)
    assert out.shape == (2, 11) and bool(jnp.all(out[:, :6] == prompt))
    smodel = VishwamAI(model.config.replace(scan_layers=True))
    sq, sp = quant.quantize(smodel, smodel.convert_params(params))
    np.testing.assert_allclose(sq.logits(sp, prompt), qmodel.logits(qparams, prompt),
                               rtol=1e-5, atol=1e-5)


def test_decode_bytes_analytic_quarter_of_f32():
    f32 = quant.decode_weight_bytes(VishwamAI("small"))
    small = VishwamAI("small").config
    i8 = quant.decode_weight_bytes(VishwamAI(small.replace(weight_quant="int8")))
    assert i8["kernels"] * 4 == f32["kernels"]
    assert 3.9 <= f32["total"] / i8["total"] <= 4.0   # scales and norms stay f32


def test_compiled_quantized_decode_step_reads_less_than_f32():
    model = VishwamAI(MID)
    qmodel = VishwamAI(MID.replace(weight_quant="int8"))
    f, fs = quant.compiled_decode_step(model, batch=1, cache_len=64)
    q, qs = quant.compiled_decode_step(qmodel, batch=1, cache_len=64)
    kernels = quant.decode_weight_bytes(model)["kernels"]
    # The compiler's figures (CPU): the arguments hold the kernels in 1 byte instead of 4 (3/4
    # of their f32 bytes saved, less the scales), and bytes accessed (loop bodies once; the
    # small kernels' f32 tiles are counted as traffic) fall by at least 1.5x.
    assert fs.argument_bytes - qs.argument_bytes >= 0.74 * kernels
    assert fs.bytes_accessed / qs.bytes_accessed >= 1.5
    # No whole kernel is dequantized into memory: the largest f32 convert is a tile of the
    # largest kernel (the head, 256 x 4096), not all of it.
    assert quant.largest_f32_weight_convert(q.as_text() or "", 1) < 256 * 4096 // 4


def test_bad_inputs(tiny):
    model, params = tiny
    with pytest.raises(validate.InputError, match="mode.*int8"):
        quant.quantize(model, params, "int4")
    with pytest.raises(validate.InputError, match="weight_quant.*none"):
        model.config.replace(weight_quant="int4")
    qmodel, qparams = quant.quantize(model, params)
    with pytest.raises(validate.InputError, match="already quantized"):
        quant.quantize(qmodel, qparams)
    with pytest.raises(validate.InputError, match="not quantized"):
        quant.dequantize(model, params)
    with pytest.raises(validate.InputTypeError, match="model"):
        quant.quantize("tiny", params)
    with pytest.raises(validate.InputError, match="params"):
        quant.quantize(model, {"token_embed": params["token_embed"]})
    q, s = quantize_weight(_w((64, 32)), (0,))
    with pytest.raises(validate.InputTypeError, match="q_KN.*int8"):
        quantized_matmul(jnp.ones((1, 64)), q.astype(jnp.float32), s)
    with pytest.raises(validate.InputError, match="block_k"):
        quantized_matmul(jnp.ones((1, 64)), q, s, blocked=True, block_k=48)
    with pytest.raises(validate.InputError, match="target"):
        quant.compiled_decode_step(model, batch=1, cache_len=8, target="gpu")
