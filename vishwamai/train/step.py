"""The optimizer and the train step: the learning-rate schedule (warm-up, cosine decay), AdamW
with weight decay on matrices only and global-norm clipping, `TrainState`, the loss and
gradient functions (mixed precision, remat, gradient accumulation), the jitted step that
donates its state, and `eval_loss`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from vishwamai.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, ModelConfig, as_config
from vishwamai import validate
from vishwamai.model import VishwamAI
from vishwamai.train.losses import DEFAULT_CHUNK, cross_entropy_sum


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
    tokens, mask = (batch["tokens"], batch.get("mask")) if isinstance(batch, Mapping) else (batch, None)
    if jnp.ndim(tokens) != 2 or jnp.shape(tokens)[1] < 2:
        validate.fail("batch", f"<tokens of shape {list(jnp.shape(tokens))}>",
                      "int tokens [B, T+1] with T >= 1, or {'tokens': [B, T+1], 'mask': [B, T]}")
    return tokens, mask


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
            raise validate.InputError(f"accum_steps={accum_steps} is not accepted: the batch size "
                                      f"{B} is not divisible by it")
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


def eval_loss(model, params, batch, *, chunk_size: int = DEFAULT_CHUNK) -> float:
    """Mean next-token loss of `params` on one batch (no dropout)."""
    loss_sum = make_loss_fn(model, chunk_size=chunk_size, train=False)
    tokens, mask = _split_batch(batch)
    tokens = jnp.asarray(tokens)
    if mask is None:
        mask = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)
    total, count = jax.jit(loss_sum)(params, tokens, mask, jax.random.PRNGKey(0))
    return float(total / jnp.maximum(count, 1.0))
