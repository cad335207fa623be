"""`fit`, the convenience training loop of the book and the tests, and its resume logic: numbered
Orbax checkpoints of the whole `TrainState` (with the batches consumed and the history),
restored and continued bitwise when `fit` is called again with the same directory, and the
token-id check of every batch.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from vishwamai import checkpoint
from vishwamai.config import as_config
from vishwamai import validate
from vishwamai.model import VishwamAI
from vishwamai.train.step import (TrainState, create_train_state, make_optimizer, make_train_step,
                                  _split_batch)


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
