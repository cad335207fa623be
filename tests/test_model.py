"""The decoder and its facade: properties, golden values, the KV cache, and the seed's calls."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.config import PRESETS, ModelConfig, seed_configs
from vishwamai.layers.norms import LayerNorm, RMSNorm
from vishwamai.layers.rope import apply_rope
from vishwamai.model import VishwamAI, sample_logits
from vishwamai.transformer import create_vishwamai_transformer

TINY = PRESETS["tiny"].replace(attention_impl="reference")
# A GPT-2-shaped tiny model: LayerNorm with biases, learned positions, tied head, GELU, MHA.
TINY_GPT = PRESETS["gpt2"].replace(vocab_size=96, num_layers=2, num_heads=4, head_dim=8,
                                   hidden_dim=32, mlp_dim=64, max_seq_len=64,
                                   attention_impl="reference")
F32_TOL = dict(rtol=1e-5, atol=1e-5)


@functools.cache
def _tiny_params():
    return VishwamAI(TINY).init(jax.random.PRNGKey(0))


def _tokens(B, T, V, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V, dtype=jnp.int32)


@pytest.fixture(scope="module", params=["tiny", "tiny_gpt"])
def model_and_params(request):
    cfg = TINY if request.param == "tiny" else TINY_GPT
    model = VishwamAI(cfg)
    return model, model.init(jax.random.PRNGKey(0))


# ---------------------------------------------------------------- golden values
def test_rmsnorm_golden():
    x = jnp.array([[3.0, 4.0]])
    y = RMSNorm(eps=0.0).apply({"params": {"scale": jnp.array([1.0, 2.0])}}, x)
    rms = np.sqrt((9 + 16) / 2)  # 3.5355...
    np.testing.assert_allclose(y, [[3 / rms, 2 * 4 / rms]], rtol=1e-6)


def test_layernorm_golden():
    x = jnp.array([[1.0, 3.0]])  # mean 2, variance 1
    y = LayerNorm(eps=0.0).apply({"params": {"scale": jnp.array([2.0, 2.0]),
                                             "bias": jnp.array([0.5, 0.5])}}, x)
    np.testing.assert_allclose(y, [[-1.5, 2.5]], rtol=1e-6)


def test_rope_golden():
    # H=2: one pair, frequency 1, so position p rotates (1, 0) to (cos p, sin p).
    x = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    for p in (0, 1, 3):
        y = apply_rope(x, jnp.array([[p]]))
        np.testing.assert_allclose(y.ravel(), [np.cos(p), np.sin(p)], atol=1e-6)
    # H=4: pairs (x0, x2) at frequency 1 and (x1, x3) at frequency theta**-0.5 = 0.01.
    x = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    y = apply_rope(x, jnp.array([[2]])).ravel()
    np.testing.assert_allclose(y, [np.cos(2), np.cos(0.02), np.sin(2), np.sin(0.02)], atol=1e-6)


def test_rope_preserves_norm_and_relative_positions():
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
    rot = lambda x, p: apply_rope(x, jnp.array([[p]]))  # noqa: E731
    np.testing.assert_allclose(jnp.linalg.norm(rot(q, 7)), jnp.linalg.norm(q), rtol=1e-5)
    # <R_a q, R_b k> depends only on a - b.
    d1 = jnp.sum(rot(q, 5) * rot(k, 2))
    d2 = jnp.sum(rot(q, 13) * rot(k, 10))
    np.testing.assert_allclose(d1, d2, rtol=1e-5)


# ---------------------------------------------------------------- properties
def test_shapes_dtypes_and_finite(model_and_params):
    model, params = model_and_params
    cfg = model.config
    logits = model.logits(params, _tokens(2, 10, cfg.vocab_size))
    assert logits.shape == (2, 10, cfg.vocab_size) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    hidden = model.hidden(params, _tokens(2, 10, cfg.vocab_size))
    assert hidden.shape == (2, 10, cfg.hidden_dim)


def test_bf16_compute_returns_bf16_logits():
    model = VishwamAI(TINY.replace(dtype="bfloat16"))
    params = _tiny_params()
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))  # param_dtype stays f32
    logits = model.logits(params, _tokens(2, 8, 256))
    assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))
    ref = VishwamAI(TINY).logits(params, _tokens(2, 8, 256))
    # bf16 has 8 mantissa bits: agreement to a few percent of the logit scale.
    assert float(jnp.max(jnp.abs(logits.astype(jnp.float32) - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 0.05


def test_causality_by_gradient():
    """d logits[t] / d embedding(token at s) is exactly zero for every s > t (untied head)."""
    model = VishwamAI(TINY)
    params = _tiny_params()
    T = 9
    tokens = jnp.arange(T, dtype=jnp.int32)[None] * 7  # distinct tokens, one row each
    for t in (0, 4, T - 1):
        def f(table):
            p = dict(params, token_embed={"embedding": table})
            return jnp.sum(model.logits(p, tokens)[0, t] ** 2)
        g = jax.jit(jax.grad(f))(params["token_embed"]["embedding"])
        row_norm = jnp.linalg.norm(g[tokens[0]], axis=-1)
        assert bool(jnp.all(row_norm[t + 1:] == 0.0)), f"position {t} sees the future"
        assert bool(jnp.all(row_norm[: t + 1] > 0.0)), f"position {t} ignores its past"


def test_jit_equals_no_jit(model_and_params):
    model, params = model_and_params
    tokens = _tokens(2, 12, model.config.vocab_size)
    eager = model.logits(params, tokens)
    jitted = jax.jit(model.logits)(params, tokens)
    np.testing.assert_allclose(eager, jitted, **F32_TOL)


@functools.cache
def _no_remat_loss_and_grads():
    return jax.jit(jax.value_and_grad(VishwamAI(TINY).loss))(_tiny_params(), _tokens(2, 16, 256))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch", "qkv_proj"])
def test_remat_equals_no_remat(policy):
    params, tokens = _tiny_params(), _tokens(2, 16, 256)
    l0, g0 = _no_remat_loss_and_grads()
    remat = VishwamAI(TINY.replace(remat=policy))
    l1, g1 = jax.jit(jax.value_and_grad(remat.loss))(params, tokens)
    np.testing.assert_allclose(l0, l1, **F32_TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


def test_dropout_only_in_training():
    model = VishwamAI(TINY.replace(dropout_rate=0.5))
    params = _tiny_params()  # dropout adds no parameters
    tokens = _tokens(1, 8, 256)
    eval1, eval2 = model.logits(params, tokens), model.logits(params, tokens)
    np.testing.assert_array_equal(eval1, eval2)
    train = model.logits(params, tokens, train=True, rng=jax.random.PRNGKey(5))
    assert float(jnp.max(jnp.abs(train - eval1))) > 1e-3


def test_every_parameter_has_logical_axes(model_and_params):
    model, params = model_and_params
    axes = model.param_axes()
    flat_axes = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = dict(jax.tree_util.tree_leaves_with_path(params))
    assert len(flat_axes) == len(shapes)
    for path, spec in flat_axes:
        assert len(spec) == shapes[path].ndim, path
        assert any(name is not None for name in spec), path


# ---------------------------------------------------------------- KV cache and generation
@pytest.mark.parametrize("prefill", [1, 5])
def test_kv_cache_logits_equal_full_forward(model_and_params, prefill):
    """Prefill `prefill` tokens, then one token per step: every position matches the full pass."""
    model, params = model_and_params
    T = 12
    tokens = _tokens(2, T, model.config.vocab_size, seed=3)
    full = model.logits(params, tokens)
    cache = model.init_cache(2, 16)
    logits, cache = model.decode_step(params, cache, tokens[:, :prefill])
    got = [logits]
    step = jax.jit(model.decode_step)
    for t in range(prefill, T):
        logits, cache = step(params, cache, tokens[:, t:t + 1])
        got.append(logits)
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), full, **F32_TOL)


def test_greedy_generation_equals_iterated_argmax(model_and_params):
    model, params = model_and_params
    prompt = _tokens(2, 4, model.config.vocab_size, seed=7)
    out = model.generate(params, prompt, 6)
    assert out.shape == (2, 10) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :4], prompt)
    seq = prompt
    logits_fn = jax.jit(model.logits)
    for _ in range(6):  # no cache: re-run the full forward each step
        nxt = jnp.argmax(logits_fn(params, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_generation_through_cache_buckets_equals_iterated_argmax(model_and_params, monkeypatch):
    """With buckets of 8 the cache grows 8 -> 16 -> 19 positions while generating (a scan per
    bucket, the cache padded between them): the tokens are those of the full forward pass."""
    from vishwamai.model import sampling
    model, params = model_and_params
    monkeypatch.setattr(sampling, "CACHE_BUCKET_MIN", 8)
    assert sampling.cache_buckets(5, 19) == [8, 16, 19]
    jax.clear_caches()                       # a fresh trace of `_generate` with these buckets
    prompt = _tokens(2, 5, model.config.vocab_size, seed=11)
    out = model.generate(params, prompt, 14)
    seq = prompt
    logits_fn = jax.jit(model.logits)
    for _ in range(14):
        nxt = jnp.argmax(logits_fn(params, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    jax.clear_caches()


def _left_pad(prompts, T, pad=0):
    x = np.full((len(prompts), T), pad, np.int32)
    mask = np.zeros((len(prompts), T), np.int32)
    for b, p in enumerate(prompts):
        x[b, T - len(p):] = p
        mask[b, T - len(p):] = 1
    return jnp.asarray(x), mask


@pytest.fixture(scope="module")
def padded_batch():
    """Prompts of lengths 4, 7 and 4, left-padded to 7 (pad id 9, a real token id)."""
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 256, n).astype(np.int32) for n in (4, 7, 4)]
    x, mask = _left_pad(prompts, 7, pad=9)
    model, params = VishwamAI(TINY), _tiny_params()
    return prompts, x, mask, np.asarray(model.generate(params, x, 6, attention_mask=mask))


def test_padded_batch_rows_equal_each_prompt_alone(padded_batch):
    """The cached, left-padded path: every row generates what its prompt generates alone."""
    model, params = VishwamAI(TINY), _tiny_params()
    prompts, x, mask, out = padded_batch
    # Alone: the two 4-token prompts unpadded (rows of a batch are independent), the 7-token one.
    short = np.asarray(model.generate(params, jnp.asarray(np.stack([prompts[0], prompts[2]])), 6))
    long = np.asarray(model.generate(params, jnp.asarray(prompts[1])[None], 6))
    np.testing.assert_array_equal(out[[0, 2], 7:], short[:, 4:])
    np.testing.assert_array_equal(out[1, 7:], long[0, 7:])
    by_length = np.asarray(model.generate(params, x, 6, prompt_lengths=[4, 7, 4]))
    np.testing.assert_array_equal(by_length, out)


def test_padded_keys_are_masked(padded_batch):
    """Changing the padding tokens changes nothing: padded keys are invisible. Without the mask
    the padding is attended to and the continuations change; a full-length mask is the
    unpadded path."""
    model, params = VishwamAI(TINY), _tiny_params()
    prompts, x, mask, out = padded_batch
    other = jnp.where(jnp.asarray(mask) == 1, x, 200)
    np.testing.assert_array_equal(
        np.asarray(model.generate(params, other, 6, attention_mask=mask))[:, 7:], out[:, 7:])
    unpadded = np.asarray(model.generate(params, x, 6))
    assert not np.array_equal(unpadded[[0, 2], 7:], out[[0, 2], 7:])
    np.testing.assert_array_equal(
        np.asarray(model.generate(params, x, 6, attention_mask=np.ones_like(mask))), unpadded)


def test_padded_full_forward_equals_alone(padded_batch):
    """`logits(..., attention_mask=...)`: each real token's logits are those it has alone."""
    model, params = VishwamAI(TINY), _tiny_params()
    prompts, x, mask, _ = padded_batch
    logits_fn = jax.jit(model.logits)
    logits = np.asarray(logits_fn(params, x, attention_mask=jnp.asarray(mask)))
    alone = np.asarray(logits_fn(params, jnp.asarray(np.stack([prompts[0], prompts[2]]))))
    np.testing.assert_allclose(logits[[0, 2], 3:], alone, **F32_TOL)


def test_rows_stop_at_eos(padded_batch):
    model, params = VishwamAI(TINY), _tiny_params()
    _, x, mask, free = padded_batch
    eos = int(free[0, 7 + 2])  # row 0's third new token
    out = np.asarray(model.generate(params, x, 6, attention_mask=mask, eos_id=eos, pad_id=1))
    for b in range(3):
        new, ref = out[b, 7:], free[b, 7:]
        hits = np.flatnonzero(ref == eos)
        stop = hits[0] if len(hits) else 6
        np.testing.assert_array_equal(new[:stop + 1], ref[:stop + 1])  # up to and with EOS
        assert (new[stop + 1:] == 1).all()                              # then padding
    assert (out[0, 7 + 3:] == 1).all()


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    rngs = jax.random.split(jax.random.PRNGKey(0), 400)
    draw = lambda **kw: np.array([int(sample_logits(logits, r, **kw)[0]) for r in rngs[:200]])  # noqa: E731
    assert set(draw(temperature=1.0, top_k=1)) == {0}
    assert set(draw(temperature=1.0, top_k=2)) <= {0, 1}
    assert set(draw(temperature=1.0, top_p=0.5)) == {0}        # 0.5 alone reaches p
    assert set(draw(temperature=1.0, top_p=0.7)) == {0, 1}     # needs the top two
    assert int(sample_logits(logits, rngs[0])[0]) == 0          # temperature 0: argmax
    full = draw(temperature=1.0)
    assert len(set(full)) >= 3                                  # unfiltered sampling spreads


def test_sampled_generation_is_reproducible():
    model = VishwamAI(TINY)
    params = _tiny_params()
    prompt = _tokens(1, 3, 256)
    kw = dict(temperature=0.8, top_k=20, top_p=0.95)
    a = model.generate(params, prompt, 8, rng=jax.random.PRNGKey(1), **kw)
    b = model.generate(params, prompt, 8, rng=jax.random.PRNGKey(1), **kw)
    c = model.generate(params, prompt, 8, rng=jax.random.PRNGKey(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_loss_at_init_is_near_uniform():
    model = VishwamAI(TINY)
    loss = float(jax.jit(model.loss)(_tiny_params(), _tokens(4, 32, 256)))
    assert abs(loss - np.log(256)) < 0.5, loss


def test_save_restore_roundtrip(tmp_path):
    model = VishwamAI(TINY)
    params = _tiny_params()
    model.save(tmp_path / "ckpt", params)
    restored = model.restore(tmp_path / "ckpt")
    jax.tree.map(np.testing.assert_array_equal, params, restored)
    with pytest.raises(ValueError, match="path"):
        model.restore(tmp_path / "missing")


# ---------------------------------------------------------------- the seed's calls
def test_seed_cells_2_and_5_run_unchanged():
    """The seed builds `base` from its dict, `init`s it and calls `apply(..., train=False)`.

    `init` runs compiled here (the same call under `jax.jit`): eagerly it dispatches 110M
    parameters' initialisers and a bf16 forward op by op, several times slower on a CPU.
    """
    configs = seed_configs()
    model = create_vishwamai_transformer(configs["base"])
    x = jnp.ones((2, 64), dtype=jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 64, 32000)
    assert logits.dtype == jnp.bfloat16  # the seed asks for dtype 'bfloat16'
    assert bool(jnp.all(jnp.isfinite(logits.astype(jnp.float32))))


def test_model_accepts_a_preset_name_and_a_dict():
    assert VishwamAI("tiny").config == PRESETS["tiny"]
    m = VishwamAI(dict(PRESETS["tiny"].to_dict()))
    assert m.config == PRESETS["tiny"]
    assert isinstance(create_vishwamai_transformer("tiny").cfg, ModelConfig)


@pytest.mark.parametrize("name", ["tiny", "gpt2", "xl", "tinyllama_1_1b", "tiny_qkv_bias"])
def test_tree_breakdown_equals_analytic_components(name):
    """Per component, the real tree and `analysis.count_params` agree (not just in total)."""
    from vishwamai.analysis import count_params

    # Qwen2's layout: biases on q, k and v only.
    cfg = PRESETS["tiny"].replace(qkv_bias=True) if name == "tiny_qkv_bias" else PRESETS[name]
    tree = VishwamAI(cfg.replace(attention_impl="reference")).param_breakdown()
    analytic = count_params(cfg)
    for component in ("embedding", "positions", "attention", "mlp", "norms", "head", "total"):
        assert tree[component] == analytic[component], component
