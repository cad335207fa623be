"""Training: the chunked loss against the plain one, remat and accumulation equalities, the
optimizer's schedule, donation, mixed precision, and a loss that falls on real text."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vishwamai import data, train
from vishwamai.config import REMAT_POLICIES, get_preset
from vishwamai.model import VishwamAI, cross_entropy

TOL = dict(rtol=1e-5, atol=1e-6)


def _allclose_tree(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.fixture(scope="module")
def tiny():
    model = VishwamAI("tiny")
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 33), 0, model.config.vocab_size)
    return model, params, tokens


# ---------------------------------------------------------------------------- chunked loss
@pytest.mark.parametrize("chunk", [1, 13, 64])
@pytest.mark.parametrize("head", ["weight", "fn"])
def test_chunked_loss_equals_plain_value_and_gradient(chunk, head):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    B, T, D, V = 3, 29, 16, 50          # T not a multiple of most chunk sizes: padding path
    h = jax.random.normal(k[0], (B, T, D))
    w = jax.random.normal(k[1], (D, V)) * 0.3
    t = jax.random.randint(k[2], (B, T), 0, V)
    m = (jax.random.uniform(k[3], (B, T)) > 0.3).astype(jnp.float32)

    def chunked(h, w):
        hw = w if head == "weight" else (lambda x: x @ w)
        return train.chunked_cross_entropy(h, hw, t, chunk_size=chunk, mask=m)

    def plain(h, w):
        return cross_entropy(h @ w, t, m)

    (a, ga), (b, gb) = [jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
                        for f in (chunked, plain)]
    np.testing.assert_allclose(a, b, **TOL)
    _allclose_tree(ga, gb, **TOL)
    np.testing.assert_allclose(jax.jit(chunked)(h, w), b, **TOL)


def test_chunked_loss_never_builds_full_logits():
    """The compiled loss-and-gradient holds at most one [B, chunk, V] block of logits."""
    B, T, D, V, C = 2, 256, 32, 4096, 32
    h = jnp.ones((B, T, D))
    w = jnp.ones((D, V))
    t = jnp.zeros((B, T), jnp.int32)
    f = jax.jit(jax.grad(lambda h, w: train.chunked_cross_entropy(h, w, t, chunk_size=C),
                         argnums=(0, 1)))
    temp = f.lower(h, w).compile().memory_analysis().temp_size_in_bytes
    full = B * T * V * 4
    assert temp < full / 2, (temp, full)


def test_chunked_loss_validates_inputs():
    h = jnp.ones((2, 4, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        train.chunked_cross_entropy(h, jnp.ones((8, 5)), jnp.zeros((2, 4), jnp.int32),
                                    chunk_size=0)
    with pytest.raises(ValueError, match=r"\[D, V\]"):
        train.chunked_cross_entropy(h, jnp.ones((5, 8)), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="targets"):
        train.chunked_cross_entropy(h, jnp.ones((8, 5)), jnp.zeros((2, 3), jnp.int32))


def test_model_loss_through_chunked_head_equals_full_logits(tiny):
    model, params, tokens = tiny
    grad_fn = jax.jit(train.make_grad_fn(model, chunk_size=8, train=False))
    loss, grads = grad_fn(params, tokens, jax.random.PRNGKey(0))
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(model.loss))(params, tokens)
    np.testing.assert_allclose(loss, ref_loss, **TOL)
    _allclose_tree(grads, ref_grads, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- remat, accumulation
def test_remat_policies_give_equal_gradients(tiny):
    _, _, tokens = tiny
    tokens = tokens[:2, :17]
    one_layer = get_preset("tiny").replace(num_layers=1)
    params = VishwamAI(one_layer).init(jax.random.PRNGKey(0))
    ref = None
    for policy in REMAT_POLICIES:
        model = VishwamAI(one_layer.replace(remat=policy))
        loss, grads = jax.jit(train.make_grad_fn(model, train=False))(params, tokens,
                                                                      jax.random.PRNGKey(0))
        if ref is None:
            ref = (loss, grads)
            continue
        np.testing.assert_allclose(loss, ref[0], **TOL)
        _allclose_tree(grads, ref[1], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_equals_one_shot(tiny):
    model, params, tokens = tiny
    mask = (jax.random.uniform(jax.random.PRNGKey(3), (4, 32)) > 0.2).astype(jnp.float32)
    batch = {"tokens": tokens, "mask": mask}
    one = jax.jit(train.make_grad_fn(model, accum_steps=1))(params, batch, jax.random.PRNGKey(0))
    four = jax.jit(train.make_grad_fn(model, accum_steps=4))(params, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(one[0], four[0], **TOL)
    _allclose_tree(one[1], four[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        train.make_grad_fn(model, accum_steps=3)(params, tokens, jax.random.PRNGKey(0))


# ---------------------------------------------------------------------------- optimizer and step
def test_schedule_warms_up_then_decays():
    s = train.lr_schedule(1e-3, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(100)), 1e-4, rtol=1e-5)
    assert float(s(50)) < 1e-3
    with pytest.raises(ValueError, match="warmup_steps"):
        train.lr_schedule(1e-3, warmup_steps=100, total_steps=100)


def test_weight_decay_only_on_matrices(tiny):
    _, params, _ = tiny
    mask = train.decay_mask(params)
    assert mask["lm_head"]["kernel"] and mask["token_embed"]["embedding"]
    assert not mask["final_norm"]["scale"]


@pytest.mark.parametrize("max_norm", [0.05, 1e6])   # clipped, and left alone
def test_clip_equals_optax_clip_by_global_norm(tiny, max_norm):
    _, params, _ = tiny
    grads = jax.tree.map(lambda p: jnp.sin(p * 7.0) * 0.1, params)
    ours, _ = train.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    _allclose_tree(ours, ref, rtol=1e-6, atol=0)
    norm = float(optax.tree.norm(ours))
    assert norm == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-5)
    with pytest.raises(ValueError, match="clip_norm"):
        train.make_optimizer(clip_norm=0.0)


def test_clip_writes_no_clipped_copy_of_the_gradients():
    # The point of train.clip_by_global_norm: XLA fuses the scale into Adam's moment updates
    # instead of materialising clipped gradients (optax's select/divide form does not fuse).
    p = {"w": jnp.ones((256, 512))}
    def fusions(opt):
        def f(p, s, g):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s
        txt = jax.jit(f).lower(p, opt.init(p), p).compile().as_text()
        return len(re.findall(r"= f32\[256,512\]\S* fusion\(", txt))
    plain = train.make_optimizer(warmup_steps=1, total_steps=10, clip_norm=None)
    ours = train.make_optimizer(warmup_steps=1, total_steps=10, clip_norm=1.0)
    theirs = optax.chain(optax.clip_by_global_norm(1.0), plain)
    assert fusions(ours) == fusions(plain) < fusions(theirs)


def test_step_donates_state_clips_and_reports(tiny):
    model, params, tokens = tiny
    opt = train.make_optimizer(1e-3, warmup_steps=1, total_steps=10, clip_norm=0.5)
    step = train.make_train_step(model, opt)
    state = train.create_train_state(model, opt, jax.random.PRNGKey(0),
                                     params=jax.tree.map(jnp.copy, params))
    old = state.params["lm_head"]["kernel"]
    new_state, metrics = step(state, tokens)
    assert old.is_deleted()                       # donated
    assert int(new_state.step) == 1
    assert set(metrics) == {"loss", "grad_norm", "learning_rate"}
    np.testing.assert_allclose(metrics["learning_rate"], 0.0, atol=0)  # warm-up starts at 0
    # The step equals optax applied by hand (clipping included).
    p2 = jax.tree.map(jnp.copy, params)
    st = opt.init(p2)
    loss, g = jax.jit(jax.value_and_grad(model.loss))(p2, tokens)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(g), rtol=1e-4)
    u, _ = jax.jit(opt.update)(g, st, p2)
    _allclose_tree(new_state.params, optax.apply_updates(p2, u), rtol=1e-4, atol=1e-7)
    _, metrics2 = step(new_state, tokens)
    np.testing.assert_allclose(metrics2["learning_rate"], 1e-3, rtol=1e-6)


def test_bf16_compute_keeps_f32_master_params(tiny):
    model, params, tokens = tiny
    opt = train.make_optimizer(1e-3, warmup_steps=1, total_steps=10)
    step = train.make_train_step(model, opt, dtype="bfloat16", donate=False)
    assert step.model.config.dtype == "bfloat16"
    state = train.create_train_state(step.model, opt, jax.random.PRNGKey(0), params=params)
    new_state, metrics = step(state, tokens)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))
    f32_loss = jax.jit(model.loss)(params, tokens)
    np.testing.assert_allclose(metrics["loss"], f32_loss, rtol=2e-2)


# ---------------------------------------------------------------------------- data and learning
def test_stdlib_bytes_are_deterministic_text():
    a, b = data.byte_tokens(50_000), data.byte_tokens(50_000)
    assert a.dtype == np.uint8 and len(a) == 50_000 and np.array_equal(a, b)
    assert b"def " in data.stdlib_bytes(50_000)
    batch = next(data.random_windows(a, 3, 16, seed=1))
    assert batch.shape == (3, 17) and batch.dtype == np.int32
    assert data.decode(batch[0])


def test_tiny_loss_falls_on_stdlib_text():
    tokens = data.byte_tokens(400_000)
    tr, va = data.train_val_split(tokens, 0.1)
    steps = 60
    opt = train.make_optimizer(3e-3, warmup_steps=6, total_steps=steps)
    state, hist = train.fit("tiny", data.random_windows(tr, 16, 64, seed=0), steps,
                            optimizer=opt, log_every=10)
    first, last = hist[0]["loss"], hist[-1]["loss"]
    assert np.isfinite(last)
    assert last < first - 1.0, (first, last)      # from ~ln 256 = 5.5 to well below
    model = VishwamAI("tiny")
    val = train.eval_loss(model, state.params, next(data.random_windows(va, 16, 64, seed=9)))
    assert val < first - 1.0
