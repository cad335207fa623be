"""Training: chunked cross-entropy, AdamW with warm-up and cosine decay, mixed precision,
rematerialisation, gradient accumulation and a jitted train step that donates its state.

Shape letters as everywhere in the package: B batch, T sequence, D width, V vocabulary.

The loss never builds the `[B, T, V]` f32 logits the seed ran out of memory on: the sequence is
cut into chunks of `chunk_size` positions and each chunk's logits live only inside one step of a
`lax.scan`. With a head *weight* the scan computes the loss and its gradients in the same pass
(a `jax.custom_vjp`: the backward pass only scales the stored gradients), so no chunk is ever
recomputed; with a head *function* each chunk is wrapped in `jax.checkpoint` instead and its
logits are recomputed in the backward pass.

Mixed precision is the config's two dtypes: parameters (and the optimizer's moments and the
gradients) stay in `param_dtype` (f32 "master" weights); matmuls run in `dtype` (e.g. bf16);
norms, softmax and the loss compute in f32.
"""
from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Any, Callable, Iterable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vishwamai import checkpoint
from vishwamai.compat import einsum_f32
from vishwamai.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, ModelConfig, as_config
from vishwamai import validate
from vishwamai.model import VishwamAI, target_masks

DEFAULT_CHUNK = 128


# ============================================================================================
# chunked cross-entropy
# ============================================================================================

def _pad_and_chunk(x, n: int, chunk: int, fill=0):
    """`[B, T, ...]` -> `[n, B, chunk, ...]`, padding T up to `n * chunk` with `fill`."""
    B, T = x.shape[:2]
    pad = n * chunk - T
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, widths, constant_values=fill)
    return x.reshape(B, n, chunk, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x_nBC, T: int):
    """`[n, B, chunk, ...]` -> `[B, T, ...]` (drops the padding)."""
    n, B, C = x_nBC.shape[:3]
    return x_nBC.swapaxes(0, 1).reshape(B, n * C, *x_nBC.shape[3:])[:, :T]


def _chunk_logits(h_BCD, w_DV):
    return einsum_f32("BCD,DV->BCV", h_BCD, w_DV.astype(h_BCD.dtype))


def _nll_from_logits(logits_BCV, t_BC, m_BC):
    """Per-position negative log-likelihood (f32) times the mask, and the log-sum-exp."""
    lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    tgt_BC = jnp.take_along_axis(logits_BCV, t_BC[..., None], axis=-1)[..., 0]
    return (lse_BC - tgt_BC) * m_BC, lse_BC


def _fused_forward(h_BTD, w_DV, t_BT, m_BT, chunk: int, with_grads: bool):
    """Scan over sequence chunks; returns the masked NLL sum and, if asked, (dh, dw) of it."""
    B, T, D = h_BTD.shape
    V = w_DV.shape[-1]
    n = -(-T // chunk)
    h_n = _pad_and_chunk(h_BTD, n, chunk)
    t_n = _pad_and_chunk(t_BT, n, chunk)
    m_n = _pad_and_chunk(m_BT, n, chunk)
    w_c = w_DV.astype(h_BTD.dtype)

    if not with_grads:
        def body(total, xs):
            h, t, m = xs
            nll, _ = _nll_from_logits(_chunk_logits(h, w_c), t, m)
            return total + jnp.sum(nll), None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h_n, t_n, m_n))
        return total, None

    def body(carry, xs):
        total, dw_DV = carry
        h, t, m = xs
        logits = _chunk_logits(h, w_c)
        # One exp per logit: e = exp(logits - max) gives both the log-sum-exp and the softmax.
        mx = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
        e = jnp.exp(logits - mx[..., None])
        s = jnp.sum(e, axis=-1)
        lse = mx + jnp.log(s)
        tgt = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        nll = (lse - tgt) * m
        # d(sum nll)/d logits = (softmax - onehot) * mask, in f32, cast for the matmuls.
        g_BCV = e * (m / s)[..., None] - jax.nn.one_hot(t, V, dtype=jnp.float32) * m[..., None]
        g_BCV = g_BCV.astype(h.dtype)
        dh = einsum_f32("BCV,DV->BCD", g_BCV, w_c)
        dw_DV = dw_DV + einsum_f32("BCD,BCV->DV", h, g_BCV)
        return (total + jnp.sum(nll), dw_DV), dh.astype(h_BTD.dtype)

    init = (jnp.zeros((), jnp.float32), jnp.zeros((D, V), jnp.float32))
    (total, dw), dh_n = jax.lax.scan(body, init, (h_n, t_n, m_n))
    return total, (_unchunk(dh_n, T), dw.astype(w_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_ce_sum(h_BTD, w_DV, t_BT, m_BT, chunk):
    return _fused_forward(h_BTD, w_DV, t_BT, m_BT, chunk, with_grads=False)[0]


def _fused_ce_sum_fwd(h_BTD, w_DV, t_BT, m_BT, chunk):
    total, grads = _fused_forward(h_BTD, w_DV, t_BT, m_BT, chunk, with_grads=True)
    return total, grads


def _fused_ce_sum_bwd(chunk, grads, g):
    dh, dw = grads
    return (dh * g.astype(dh.dtype), dw * g.astype(dw.dtype), None, None)


_fused_ce_sum.defvjp(_fused_ce_sum_fwd, _fused_ce_sum_bwd)


def _checkpointed_ce_sum(h_BTD, head_fn, t_BT, m_BT, chunk: int):
    """Scan over chunks; each chunk's logits are recomputed in the backward pass."""
    B, T, _ = h_BTD.shape
    n = -(-T // chunk)

    @jax.checkpoint
    def chunk_nll(h, t, m):
        nll, _ = _nll_from_logits(head_fn(h).astype(jnp.float32), t, m)
        return jnp.sum(nll)

    def body(total, xs):
        return total + chunk_nll(*xs), None

    xs = (_pad_and_chunk(h_BTD, n, chunk), _pad_and_chunk(t_BT, n, chunk),
          _pad_and_chunk(m_BT, n, chunk))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total


def cross_entropy_sum(hidden_BTD, head_weight_or_fn, targets_BT, *,
                      chunk_size: int = DEFAULT_CHUNK, mask=None, ignore_index: int | None = None):
    """Sum over counted positions of the next-token NLL, and the count. See
    `chunked_cross_entropy`; returns `(nll_sum, count)`, both f32 scalars."""
    if hidden_BTD.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D]; got shape {hidden_BTD.shape}")
    B, T, D = hidden_BTD.shape
    if targets_BT.shape != (B, T):
        raise ValueError(f"targets must be [B, T]=({B}, {T}); got {targets_BT.shape}")
    validate.positive_int("chunk_size", chunk_size)
    if ignore_index is not None:
        validate.integer("ignore_index", ignore_index)
    chunk = min(chunk_size, T)
    m_BT = jnp.ones((B, T), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    if m_BT.shape != (B, T):
        raise ValueError(f"mask must be [B, T]=({B}, {T}); got {m_BT.shape}")
    if callable(head_weight_or_fn):
        V = jax.eval_shape(head_weight_or_fn, hidden_BTD[:, :1]).shape[-1]
    else:
        w = head_weight_or_fn
        if w.ndim != 2 or w.shape[0] != D:
            raise ValueError(f"head weight must be [D, V] with D={D}; got shape {w.shape}")
        V = w.shape[-1]
    validate.token_ids("targets", targets_BT, V, ignore_index=ignore_index)
    keep_BT, t_BT, bad_BT = target_masks(jnp.asarray(targets_BT), V, ignore_index)
    m_BT = m_BT * keep_BT
    if callable(head_weight_or_fn):
        total = _checkpointed_ce_sum(hidden_BTD, head_weight_or_fn, t_BT, m_BT, chunk)
    else:
        total = _fused_ce_sum(hidden_BTD, w, t_BT, m_BT, chunk)
    # A target outside [0, V) that is not ignore_index (only possible under jit, where the
    # check above cannot see values): the loss is NaN rather than a loss on another token.
    total = jnp.where(jnp.any(bad_BT & (m_BT > 0)), jnp.nan, total)
    return total, jnp.sum(m_BT)


def chunked_cross_entropy(hidden_BTD, head_weight_or_fn, targets_BT, *,
                          chunk_size: int = DEFAULT_CHUNK, mask=None,
                          ignore_index: int | None = None):
    """Mean next-token cross-entropy without materialising the `[B, T, V]` logits.

    `hidden_BTD[:, t]` is the final-normed hidden state whose logits predict `targets_BT[:, t]`
    (the caller shifts: hidden of tokens 0..T-2, targets tokens 1..T-1). The sequence is cut
    into chunks of `chunk_size` positions; only one `[B, chunk, V]` block of f32 logits exists
    at a time, in the forward and in the backward pass.

    Args:
      hidden_BTD: `[B, T, D]` hidden states in the compute dtype.
      head_weight_or_fn: the output head, either its weight `[D, V]` (logits = h @ W; for tied
        embeddings pass `embedding.T`) or a function `h_BCD -> logits_BCV`. With a weight, the
        loss and its gradients are computed in one pass over the chunks (nothing recomputed);
        with a function, each chunk is `jax.checkpoint`-ed and recomputed in the backward pass.
      targets_BT: `[B, T]` int target ids.
      chunk_size: positions per chunk (clipped to T; T need not be a multiple).
      mask: optional `[B, T]` weights (1 = count the position, 0 = ignore).
      ignore_index: a target value (e.g. -100) whose positions are left out of the sum and
        of the count. Other targets must be in [0, V): concrete ones are checked
        (`InputError`); under jit a bad one makes the loss NaN.

    Returns:
      The f32 scalar `sum(nll * mask) / max(sum(mask), 1)`, equal to `cross_entropy(h @ W, t)`.
    """
    total, count = cross_entropy_sum(hidden_BTD, head_weight_or_fn, targets_BT,
                                     chunk_size=chunk_size, mask=mask, ignore_index=ignore_index)
    return total / jnp.maximum(count, 1.0)


# ============================================================================================
# optimizer
# ============================================================================================

def lr_schedule(learning_rate: float = 3e-4, *, warmup_steps: int = 100, total_steps: int = 1000,
                min_lr_ratio: float = 0.1) -> Callable:
    """Linear warm-up from 0 to `learning_rate` (the peak) over `warmup_steps`, then cosine
    decay to `min_lr_ratio * learning_rate` at `total_steps`."""
    validate.positive("learning_rate", learning_rate)
    validate.positive_int("total_steps", total_steps)
    validate.integer("warmup_steps", warmup_steps, lo=0, hi=total_steps - 1)
    validate.fraction("min_lr_ratio", min_lr_ratio, closed=True)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=learning_rate * min_lr_ratio)


def decay_mask(params):
    """Weight decay applies to matrices (kernels, embeddings), not to norm scales or biases.

    Decided by the leaf's name, not its rank: a scanned model (`scan_layers`) stacks a norm
    scale into an [L, D] array, and a multi-head bias is [N, H]; neither is a matrix.
    """
    def is_matrix(path, p):
        return getattr(path[-1], "key", None) not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(learning_rate: float = 3e-4, *, warmup_steps: int = 100, total_steps: int = 1000,
                   min_lr_ratio: float = 0.1, weight_decay: float = 0.1, b1: float = 0.9,
                   b2: float = 0.95, eps: float = 1e-8,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on matrices only) behind global-norm clipping, with the
    warm-up + cosine `lr_schedule`. The current learning rate is kept in the optimizer state
    (`optax.inject_hyperparams`), so the train step can report it."""
    validate.non_negative("weight_decay", weight_decay)
    validate.fraction("b1", b1)
    validate.fraction("b2", b2)
    validate.positive("eps", eps)
    if clip_norm is not None:
        validate.positive("clip_norm", clip_norm)
    schedule = lr_schedule(learning_rate, warmup_steps=warmup_steps, total_steps=total_steps,
                           min_lr_ratio=min_lr_ratio)
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
        mask=decay_mask)
    if clip_norm is None:
        return adamw
    return optax.chain(clip_by_global_norm(clip_norm), adamw)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm(max_norm)` written as one scalar multiply per leaf.

    Same result (to rounding): gradients whose global norm exceeds `max_norm` are scaled by
    `max_norm / norm`. optax selects between `g` and `g / norm * max_norm`; XLA will not copy
    that divide into both consumers (Adam's two moment updates), so it writes the clipped
    gradients out as an extra full-size array. A multiply by a scalar is fused into each
    consumer instead: on the `small` preset (58M parameters, f32, 2-core CPU) the optimizer
    update takes ~100 ms instead of ~155 ms.
    """
    validate.positive("clip_norm", max_norm)

    def init_fn(params):
        del params
        return optax.ClipByGlobalNormState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


# ============================================================================================
# state and step
# ============================================================================================

@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes: a pytree, donated to the step and returned new."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def as_model(model_or_cfg, *, dtype=None, remat=None, attention_impl=None) -> VishwamAI:
    """A `VishwamAI` from a model, config, preset name or dict, with run-time overrides of its
    compute `dtype`, `remat` policy and `attention_impl` (the same model when none changes)."""
    cfg = model_or_cfg.config if isinstance(model_or_cfg, VishwamAI) else as_config(model_or_cfg)
    changes = {}
    if dtype is not None:
        changes["dtype"] = validate.one_of("dtype", dtype, DTYPES)
    if remat is not None:
        changes["remat"] = validate.one_of("remat", remat, REMAT_POLICIES)
    if attention_impl is not None:
        changes["attention_impl"] = validate.one_of("attention_impl", attention_impl,
                                                    ATTENTION_IMPLS)
    if changes:
        cfg = cfg.replace(**changes)
    if isinstance(model_or_cfg, VishwamAI) and cfg == model_or_cfg.config:
        return model_or_cfg
    return VishwamAI(cfg)


def create_train_state(model, optimizer: optax.GradientTransformation, rng, *,
                       params=None) -> TrainState:
    """A fresh `TrainState`: parameters from `model.init(rng)` unless given, optimizer state
    from `optimizer.init`, step 0."""
    init_rng, rng = jax.random.split(rng)
    if params is None:
        params = model.init(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=rng)


def head_weight(params, cfg: ModelConfig):
    """The output head as a `[D, V]` weight (the transposed table when embeddings are tied)."""
    if cfg.tie_embeddings:
        return params["token_embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def _split_batch(batch):
    """`tokens [B, T+1]` or `{'tokens': [B, T+1], 'mask': [B, T]}` -> (tokens, mask or None)."""
    if isinstance(batch, Mapping):
        return batch["tokens"], batch.get("mask")
    return batch, None


def make_loss_fn(model, *, chunk_size: int = DEFAULT_CHUNK, train: bool = True):
    """`loss_sum(params, tokens_BT1, mask_BT, rng) -> (nll_sum, count)` through the chunked loss.

    Positions 0..T-1 of `tokens_BT1` are inputs, 1..T are targets.
    """
    cfg = model.config

    def loss_sum(params, tokens_BT1, mask_BT, rng):
        inputs, targets = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
        use_dropout = train and cfg.dropout_rate > 0
        h_BTD = model.hidden(params, inputs, train=use_dropout, rng=rng if use_dropout else None)
        return cross_entropy_sum(h_BTD, head_weight(params, cfg), targets,
                                 chunk_size=chunk_size, mask=mask_BT)

    return loss_sum


def make_grad_fn(model, *, chunk_size: int = DEFAULT_CHUNK, accum_steps: int = 1,
                 train: bool = True):
    """`grad_fn(params, batch, rng) -> (mean loss, grads)`, unjitted.

    With `accum_steps > 1` the batch is split into that many microbatches (row r goes to
    microbatch r mod accum_steps, so a batch sharded over devices stays evenly sharded) and
    their gradients are summed in f32 inside a `lax.scan`; only one microbatch's activations
    are alive at a time. Every position is weighted by 1 / (counted positions in the whole
    batch), so the result equals the one-shot gradient up to summation order.
    """
    validate.positive_int("accum_steps", accum_steps)
    loss_sum = make_loss_fn(model, chunk_size=chunk_size, train=train)

    def grad_fn(params, batch, rng):
        tokens, mask = _split_batch(batch)
        B, T1 = tokens.shape
        if mask is None:
            mask = jnp.ones((B, T1 - 1), jnp.float32)
        mask = mask.astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(mask), 1.0)

        def scaled(p, tok, msk, r):
            total, _ = loss_sum(p, tok, msk, r)
            return total / denom

        if accum_steps == 1:
            return jax.value_and_grad(scaled)(params, tokens, mask, rng)
        if B % accum_steps:
            raise ValueError(f"batch size {B} is not divisible by accum_steps={accum_steps}")
        b = B // accum_steps
        tok_A = tokens.reshape(b, accum_steps, T1).swapaxes(0, 1)
        msk_A = mask.reshape(b, accum_steps, T1 - 1).swapaxes(0, 1)
        rngs = jax.random.split(rng, accum_steps)

        def body(carry, xs):
            loss_acc, g_acc = carry
            loss, g = jax.value_and_grad(scaled)(params, *xs)
            g_acc = jax.tree.map(lambda a, x: a + x.astype(a.dtype), g_acc, g)
            return (loss_acc + loss, g_acc), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                        (tok_A, msk_A, rngs))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return loss, grads

    return grad_fn


def current_lr(opt_state):
    """The learning rate stored by `optax.inject_hyperparams`, or NaN if the optimizer has none."""
    def find(node):
        hp = getattr(node, "hyperparams", None)
        if isinstance(hp, Mapping) and "learning_rate" in hp:
            return hp["learning_rate"]
        if isinstance(node, (tuple, list)):
            for child in node:
                found = find(child)
                if found is not None:
                    return found
        inner = getattr(node, "inner_state", None)
        return None if inner is None else find(inner)

    lr = find(opt_state)
    return jnp.asarray(jnp.nan, jnp.float32) if lr is None else jnp.asarray(lr, jnp.float32)


def make_step_fn(model, optimizer, *, chunk_size: int = DEFAULT_CHUNK, accum_steps: int = 1):
    """The unjitted `step(state, batch) -> (state, metrics)`; `make_train_step` jits it."""
    grad_fn = make_grad_fn(model, chunk_size=chunk_size, accum_steps=accum_steps)

    def step(state: TrainState, batch):
        rng, sub = jax.random.split(state.rng)
        loss, grads = grad_fn(state.params, batch, sub)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": current_lr(opt_state)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                          rng=rng), metrics

    return step


def make_train_step(model_or_cfg, optimizer: optax.GradientTransformation, *,
                    chunk_size: int = DEFAULT_CHUNK, accum_steps: int = 1, donate: bool = True,
                    dtype: str | None = None, remat: str | None = None,
                    attention_impl: str | None = None, in_shardings=None, out_shardings=None):
    """A jitted `step(state, batch) -> (state, metrics)`.

    Args:
      model_or_cfg: a `VishwamAI`, `ModelConfig`, seed-format dict or preset name.
      optimizer: e.g. `make_optimizer(...)`.
      chunk_size: sequence chunk of the cross-entropy (see `chunked_cross_entropy`).
      accum_steps: microbatches per step (gradient accumulation, see `make_grad_fn`).
      donate: donate the input state's buffers to the output (halves the state's peak memory;
        the state passed in is invalid afterwards).
      dtype, remat, attention_impl: override the config's compute dtype, remat policy and
        attention kernel (`'bfloat16'` gives bf16 compute over the f32 master parameters).
      in_shardings, out_shardings: passed to `jax.jit` (see `vishwamai.sharding`).

    The batch is `int [B, T+1]` tokens or `{'tokens': [B, T+1], 'mask': [B, T]}`. Metrics:
    `loss` (mean over counted positions), `grad_norm` (global, before clipping),
    `learning_rate` (the one this step applied). The returned function has `.model` (with the
    overrides applied) and `.step_fn` (unjitted).
    """
    model = as_model(model_or_cfg, dtype=dtype, remat=remat, attention_impl=attention_impl)
    step = make_step_fn(model, optimizer, chunk_size=chunk_size, accum_steps=accum_steps)
    kw = {}
    if in_shardings is not None:
        kw["in_shardings"] = in_shardings
    if out_shardings is not None:
        kw["out_shardings"] = out_shardings
    jitted = jax.jit(step, donate_argnums=(0,) if donate else (), **kw)
    jitted.model = model
    jitted.step_fn = step
    return jitted


def _storable(state: TrainState) -> TrainState:
    """`state` with a typed PRNG key (`jax.random.key`) as its raw key data, which Orbax and
    numpy can write; raw `PRNGKey` arrays pass unchanged."""
    if jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key):
        return state.replace(rng=jax.random.key_data(state.rng))
    return state


def _unstorable(saved: TrainState, like: TrainState) -> TrainState:
    """The inverse of `_storable`, with the key implementation of `like`."""
    if jnp.issubdtype(like.rng.dtype, jax.dtypes.prng_key):
        return saved.replace(rng=jax.random.wrap_key_data(saved.rng,
                                                          impl=jax.random.key_impl(like.rng)))
    return saved


def fit(model_or_cfg, batches: Iterable | Callable[[int], Iterable], steps: int, *,
        optimizer=None, rng=None, state: TrainState | None = None, log_every: int = 1,
        checkpoint_dir: str | os.PathLike | None = None, save_every: int | None = None,
        keep: int | None = None, **step_kw):
    """Runs `steps` train steps over `batches`; returns `(state, history)`.

    `history` is a list of dicts, one per `log_every` steps: step, loss, grad_norm,
    learning_rate and the wall-clock seconds of that step alone (the steps before it are
    finished first; the first logged step includes compilation).
    A convenience for the book and the tests; real runs call the step in their own loop.

    Checkpoints and resuming: with `checkpoint_dir`, the whole `TrainState` (parameters,
    optimizer state, step, rng), the number of batches consumed and the history so far are
    saved every `save_every` steps and after the last one, as numbered Orbax checkpoints of
    which the newest `keep` are kept (None: all; see `vishwamai.checkpoint.manager`). Each is
    written atomically, with the model's config and a sha256 of every leaf. Called again with
    the same directory, `fit` resumes from the newest checkpoint: it restores the state, skips
    the batches already consumed (calls `batches(position)` when `batches` is callable, else
    draws and drops that many from the iterable, so it must yield the same sequence again),
    continues the rng where it was, and returns the whole run's history. `steps` counts from
    the start of the run; a restored checkpoint takes the place of `state` and `rng`. On CPU
    a resumed run equals an uninterrupted one bitwise (tests/test_resume.py).

    Args:
      batches: an iterable of batches, or a function `position -> iterable` of the batches
        from that position on (a seekable source).
      checkpoint_dir: directory of the run's checkpoints (created if missing).
      save_every: steps between checkpoints (None: only after the last step).
      keep: newest checkpoints to keep.

    Each batch's token ids are checked on the host (they are concrete here) and `batches`
    running out before `steps` raises `InputError` saying how many it gave.
    """
    validate.positive_int("steps", steps)
    validate.positive_int("log_every", log_every)
    if checkpoint_dir is None and (save_every is not None or keep is not None):
        raise ValueError(f"save_every={save_every!r} and keep={keep!r} need a checkpoint_dir")
    if save_every is not None and not (isinstance(save_every, int) and save_every >= 1):
        raise ValueError(f"save_every must be an int >= 1 or None; got {save_every!r}")
    if keep is not None and not (isinstance(keep, int) and keep >= 1):
        raise ValueError(f"keep must be an int >= 1 or None; got {keep!r}")
    optimizer = optimizer or make_optimizer(warmup_steps=min(max(1, steps // 10), steps - 1),
                                            total_steps=steps)
    step_fn = make_train_step(model_or_cfg, optimizer, **step_kw)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    state = state or create_train_state(step_fn.model, optimizer, rng)
    history, start, mngr = [], 0, None
    cfg_dict = step_fn.model.config.to_dict()
    if checkpoint_dir is not None:
        mngr = checkpoint.manager(checkpoint_dir, keep=keep)
        latest = mngr.latest_step()
        if latest is not None:
            abstract = jax.eval_shape(_storable, state)
            saved, record = checkpoint.restore_step(mngr, latest, abstract, config=cfg_dict)
            state = _unstorable(saved, state)
            start, history = record["extra"]["batches_consumed"], record["extra"]["history"]
    try:
        it = _checked_batches(batches(start) if callable(batches) else batches,
                              steps - start if callable(batches) else steps,
                              _vocab_size(model_or_cfg))
        if not callable(batches):
            for _ in range(start):
                next(it)
        for i in range(start, steps):
            batch = jnp.asarray(next(it))
            logged = (i + 1) % log_every == 0 or i == steps - 1
            if logged:          # time this step alone: let the steps queued before it finish
                jax.block_until_ready(state)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            if logged:
                metrics = jax.device_get(metrics)
                history.append({"step": i + 1, **{k: float(v) for k, v in metrics.items()},
                                "seconds": time.perf_counter() - t0})
            if mngr is not None and ((save_every and (i + 1) % save_every == 0)
                                     or i == steps - 1):
                checkpoint.save_step(mngr, i + 1, _storable(state), config=cfg_dict,
                                     extra={"batches_consumed": i + 1, "history": history})
    finally:
        if mngr is not None:
            mngr.close()
    return state, history


def _vocab_size(model_or_cfg) -> int:
    cfg = model_or_cfg.config if isinstance(model_or_cfg, VishwamAI) else as_config(model_or_cfg)
    return cfg.vocab_size


def _checked_batches(batches, steps: int, vocab_size: int):
    """`batches` as an iterator that checks each batch's token ids and says, when it runs
    out, how many batches it gave against the steps asked (instead of a bare StopIteration).
    A sized `batches` (a list) shorter than `steps` is refused at once, before any work."""
    try:
        it = iter(batches)
    except TypeError:
        validate.fail("batches", batches, "an iterable of batches (int [B, T+1] arrays or "
                      "{'tokens': ..., 'mask': ...} dicts)", type_error=True)
    if hasattr(batches, "__len__") and len(batches) < steps:
        raise validate.InputError(
            f"batches holds {len(batches)} batch(es) but steps={steps} were asked: give at "
            f"least {steps} batches (e.g. itertools.cycle(batches)) or fewer steps")
    try:                     # the first batch is checked now, before any compilation
        first = next(it)
    except StopIteration:
        raise validate.InputError(f"batches is empty but steps={steps} were asked") from None
    validate.token_ids("batches[0] tokens", _split_batch(first)[0], vocab_size)
    return _checking(itertools.chain([first], it), steps, vocab_size)


def _checking(it, steps: int, vocab_size: int):
    given = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            if given < steps:
                raise validate.InputError(
                    f"batches ran out after {given} batch(es) but steps={steps} were asked: "
                    f"give at least {steps} batches (e.g. itertools.cycle(batches)) or fewer "
                    "steps") from None
            return
        tokens, _ = _split_batch(batch)
        validate.token_ids(f"batches[{given}] tokens", tokens, vocab_size)
        given += 1
        yield batch


def eval_loss(model, params, batch, *, chunk_size: int = DEFAULT_CHUNK) -> float:
    """Mean next-token loss of `params` on one batch (no dropout)."""
    loss_sum = make_loss_fn(model, chunk_size=chunk_size, train=False)
    tokens, mask = _split_batch(batch)
    tokens = jnp.asarray(tokens)
    if mask is None:
        mask = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)
    total, count = jax.jit(loss_sum)(params, tokens, mask, jax.random.PRNGKey(0))
    return float(total / jnp.maximum(count, 1.0))
