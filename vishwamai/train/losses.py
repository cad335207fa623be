"""The chunked cross-entropy: the loss never builds the `[B, T, V]` f32 logits. The sequence is cut
into chunks of `chunk_size` positions scanned one at a time; with a head weight the loss and its
gradients come out of the same pass (a `jax.custom_vjp`), with a head function each chunk is
rematerialised (`jax.checkpoint`). `cross_entropy_sum` returns (sum, count),
`chunked_cross_entropy` the mean.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vishwamai.compat import einsum_f32
from vishwamai import validate
from vishwamai.model import target_masks


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
