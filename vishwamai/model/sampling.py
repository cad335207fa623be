"""The pure functions `VishwamAI`'s methods build on: the next-token loss (`cross_entropy`,
`target_masks` with `ignore_index`), sampling from logits (temperature, top-k, top-p), and the
checks of generation's inputs (sampling parameters, attention masks, token ids) and of a KV
cache's fill.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai import validate


def cross_entropy(logits_BTV, targets_BT, mask_BT=None, *, ignore_index: int | None = None):
    """Mean next-token cross-entropy in f32 over the counted positions.

    Args:
      logits_BTV: `[B, T, V]` logits.
      targets_BT: `[B, T]` int ids in [0, V), or `ignore_index` where a position is not scored.
      mask_BT: optional `[B, T]` weights (1 = count the position, 0 = ignore).
      ignore_index: a target value that marks a position as not scored (Hugging Face and torch
        use -100): it is left out of the sum and of the count of positions.
    Returns:
      `sum(nll * weight) / max(sum(weight), 1)`, weight = mask and not ignored.

    Concrete targets outside [0, V) (other than `ignore_index`) raise `InputError`; under jit,
    where their values are unknown, such a target makes the loss NaN.
    """
    V = logits_BTV.shape[-1]
    targets_BT = jnp.asarray(targets_BT)
    validate.token_ids("targets", targets_BT, V, ignore_index=ignore_index)
    keep_BT, safe_BT, bad_BT = target_masks(targets_BT, V, ignore_index)
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp, safe_BT[..., None], axis=-1)[..., 0]
    w_BT = keep_BT.astype(jnp.float32)
    if mask_BT is not None:
        w_BT = w_BT * jnp.asarray(mask_BT, jnp.float32)
    loss = jnp.sum(nll_BT * w_BT) / jnp.maximum(jnp.sum(w_BT), 1.0)
    return jnp.where(jnp.any(bad_BT), jnp.nan, loss)


def target_masks(targets_BT, vocab_size: int, ignore_index: int | None = None):
    """`(keep, safe, bad)` for a target array: `keep` False at `ignore_index`, `safe` the ids
    with every unusable one replaced by 0 (so a gather never reads another row), `bad` True at
    ids outside [0, vocab_size) that are not `ignore_index` (the caller makes the loss NaN)."""
    ignored = (jnp.zeros(targets_BT.shape, bool) if ignore_index is None
               else targets_BT == ignore_index)
    bad = ((targets_BT < 0) | (targets_BT >= vocab_size)) & ~ignored
    safe = jnp.where(ignored | bad, 0, targets_BT).astype(jnp.int32)
    return ~ignored, safe, bad


def sample_logits(logits_BV, rng, *, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None):
    """Picks one token per row: greedy at temperature 0, else sampled after top-k / top-p.

    Args:
      logits_BV: `[B, V]` next-token logits.
      temperature: 0 for argmax; > 0 divides the logits.
      top_k: keep the k most likely tokens (None: all; a k above the vocabulary keeps all, as
        transformers clamps it).
      top_p: keep the smallest set whose probability reaches p (nucleus; None: all).
    Returns:
      `[B]` int32 token ids.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    if top_p is not None:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        # Keep token i while the mass strictly before it is < p (the top token always stays).
        keep_BV = (cum_BV - jax.nn.softmax(sorted_BV, axis=-1)) < top_p
        cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _check_sampling(temperature, top_k, top_p, vocab_size):
    validate.non_negative("temperature", temperature)
    if top_k is not None:
        validate.integer("top_k", top_k, lo=1)        # above vocab_size: clamped by the caller
    if top_p is not None:
        validate.probability("top_p", top_p)


def _check_mask(attention_mask, shape, *, left_padded: bool):
    """`attention_mask` (1 = token, 0 = padding) as a bool numpy `[B, T]`, checked."""
    mask = np.asarray(attention_mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"attention_mask must have the prompt's shape [B, T]={list(shape)}; got "
                         f"{list(mask.shape)}")
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        mask = mask.astype(bool)
    if not mask.any(axis=1).all():
        raise ValueError(f"attention_mask rows {np.flatnonzero(~mask.any(axis=1)).tolist()} "
                         "hold no token")
    if left_padded and (np.diff(mask.astype(np.int8), axis=1) < 0).any():
        raise ValueError("attention_mask must be left-padded (each row: zeros, then ones); "
                         f"rows {np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1)).tolist()} are not")
    return mask


def _mask_positions(mask_BT):
    """Positions that start at 0 at each row's first token (0 on the padding before it)."""
    return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)


def _check_token_id(name, value, vocab_size, *, allow_many: bool = False):
    values = value if (allow_many and isinstance(value, (list, tuple))) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < vocab_size:
            kind = "an int or a list of ints" if allow_many else "an int"
            raise ValueError(f"{name} must be {kind} in [0, {vocab_size}); got {value!r}")
    return tuple(int(v) for v in values)


def _cache_fill(cache):
    """(positions filled, capacity S) of a KV cache made by `init_cache`; (None, None) if it
    has no such entries."""
    used = cache.get("position") if isinstance(cache, Mapping) else None
    capacity = None
    for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
        if getattr(path[-1], "key", None) == "cached_key":
            capacity = leaf.shape[-2]          # [K*B, S, H], or [L, K*B, S, H] scanned
            break
    if used is None or capacity is None:
        return None, None
    return used, capacity


#: The smallest cache `generate` allocates: below it one program serves every length.
CACHE_BUCKET_MIN = 256


def cache_buckets(prompt_len: int, total: int, minimum: int | None = None) -> list[int]:
    """The cache capacities `generate` decodes through: the first power of two holding the
    prompt and one new token (at least `minimum`, default `CACHE_BUCKET_MIN`), doubling,
    the last one `total` (= prompt + new tokens). A step reads its bucket's positions, so
    the cache a step reads is under twice its filled part (and at least `minimum`)."""
    minimum = CACHE_BUCKET_MIN if minimum is None else minimum
    cap = max(minimum, 1 << int(prompt_len).bit_length())
    out = []
    while cap < total:
        out.append(cap)
        cap *= 2
    return out + [total]


def grow_cache(cache, capacity: int):
    """`cache` (from `init_cache`) with its keys and values padded with zeros to `capacity`
    positions (axis -2 of `[K*B, S, H]`)."""
    def pad(path, x):
        if getattr(path[-1], "key", None) not in ("cached_key", "cached_value"):
            return x
        widths = [(0, 0)] * x.ndim
        widths[-2] = (0, capacity - x.shape[-2])
        return jnp.pad(x, widths)
    return jax.tree_util.tree_map_with_path(pad, cache)


def scan_buckets(step, carry, buckets, prompt_len: int, steps: int, valid_BS=None) -> list:
    """Runs `steps` decode steps as one `lax.scan` per cache bucket, growing the carried cache
    (`carry[0]`) between them; step k writes position prompt_len + k, so bucket `cap` runs
    the steps that fit it. `step(carry, _, valid_BS)` sees the key mask cut to its bucket.
    Returns the scans' outputs, each `[B, n]`."""
    outs, done = [], 0
    for cap in buckets:
        n = min(cap - prompt_len, steps) - done
        if n <= 0:
            continue
        if _cache_fill(carry[0])[1] != cap:
            carry = (grow_cache(carry[0], cap),) + tuple(carry[1:])
        valid = None if valid_BS is None else valid_BS[:, :cap]
        carry, out_NB = jax.lax.scan(functools.partial(step, valid_BS=valid), carry, None,
                                     length=n)
        outs.append(out_NB.T)
        done += n
    return outs
