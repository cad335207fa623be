"""The pure-JAX attention kernels: `reference_attention` (plain f32 softmax attention, the ground
truth) and `flash_attention` (blockwise online softmax with a FlashAttention-2 style recomputing
`custom_vjp`), with the flash tile planner (`_plan_blocks`, `flash_tile_map`) and the default
tile sizes per backend. Shapes and masking follow `vishwamai.kernels.attention`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vishwamai import validate
from vishwamai.kernels.attention_checks import _check_masks, _check_shapes, _dense_visible
from vishwamai.kernels.target import backend as _backend


# Default (block_q, block_k) of `flash_attention` per backend. The CPU pair was chosen with
# `python -m vishwamai.benchmarks.attention --tune --seq-lens 4096` (2-core AVX-512 host, B=1,
# N=8, H=64, f32, causal fwd+bwd): 512-wide tiles were 1.2-2x slower (a 512x512 f32 tile per
# head no longer stays in cache, and the diagonal wastes more), 128/256 mixes within noise of
# 256x256, which keeps the loop short. GPU/TPU values follow the vendor kernels' tiles; there
# `auto` prefers cuDNN / Pallas anyway.
DEFAULT_BLOCKS = {"cpu": (256, 256), "gpu": (128, 128), "tpu": (512, 512)}


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------

def reference_attention(q, k, v, *, causal: bool = False, mask=None, scale: float | None = None,
                        kv_lengths=None, q_segment_ids=None, kv_segment_ids=None):
    """Plain softmax attention computed in f32: the ground truth every kernel is tested against.

    Args:
      q: `[B, T, N, H]` queries.
      k, v: `[B, S, K, H]` keys and values, N a multiple of K (GQA without repeating K/V).
      causal: query i attends to keys j <= i (top-left aligned, as `jax.nn.dot_product_attention`).
      mask: optional boolean, broadcastable to `[B, N, T, S]`; True = attend.
      scale: logits scale, default `1/sqrt(H)`.
      kv_lengths: optional int `[B]`; keys at positions >= kv_lengths[b] are padding.
      q_segment_ids, kv_segment_ids: optional int `[B, T]` and `[B, S]`; a query attends only to
        keys with its segment id.

    Returns:
      `[B, T, N, H]` in q's dtype. A row with no visible key returns zeros.
    """
    _check_shapes(q, k, v)
    mask = _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    scale = H ** -0.5 if scale is None else scale
    q_BTKGH = q.reshape(B, T, K, G, H).astype(jnp.float32)
    logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k.astype(jnp.float32)) * scale
    visible = _dense_visible(B, T, S, causal=causal, mask=mask, kv_lengths=kv_lengths,
                             q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    visible = jnp.broadcast_to(visible, (B, N, T, S)).reshape(B, K, G, T, S)
    logits_BKGTS = jnp.where(visible, logits_BKGTS, -jnp.inf)
    row_max = jnp.max(logits_BKGTS, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(logits_BKGTS - row_max)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", p, v.astype(jnp.float32))
    return out_BTKGH.reshape(B, T, N, H).astype(q.dtype)


# --------------------------------------------------------------------------------------------
# flash: blockwise online softmax with a recomputing backward pass
# --------------------------------------------------------------------------------------------

class _FlashConfig(NamedTuple):
    """Static description of one flash call (hashable: it is a `nondiff_argnums` argument)."""
    causal: bool
    T: int          # real query length
    S: int          # real key length
    block_q: int
    block_k: int
    n_q: int        # number of query blocks (padded length = n_q * block_q)
    n_k: int
    has_mask: bool
    has_lengths: bool
    has_segments: bool


def _plan_blocks(length: int, block: int) -> tuple[int, int]:
    """(block size, number of blocks) covering `length` with at most 7 padded rows per block."""
    if block < 1:
        raise ValueError(f"block sizes must be >= 1; got {block}")
    if length <= block:
        return length, 1
    n = -(-length // block)
    b = -(-length // n)
    b = -(-b // 8) * 8   # sublane-friendly; padding stays < 8 * n rows
    return b, -(-length // b)


def _block_visible(cfg: _FlashConfig, aux, i, j):
    """Visibility of query block i against key block j, broadcastable to [B, K, bq, G, bk].

    Returns None when every pair is visible, so the unmasked path does no selects at all.
    """
    bq, bk = cfg.block_q, cfg.block_k
    q_pos = i * bq + lax.iota(jnp.int32, bq)
    k_pos = j * bk + lax.iota(jnp.int32, bk)
    vis = None

    def both(a, b):
        return b if a is None else a & b

    if cfg.n_k * bk != cfg.S:                      # internal key padding
        vis = both(vis, (k_pos < cfg.S)[None, None, None, None, :])
    if cfg.causal:
        vis = both(vis, (q_pos[:, None] >= k_pos[None, :])[None, None, :, None, :])
    if cfg.has_lengths:
        vis = both(vis, (k_pos[None, :] < aux["kv_lengths"][:, None])[:, None, None, None, :])
    if cfg.has_segments:
        qs = lax.dynamic_slice_in_dim(aux["q_seg"], i * bq, bq, axis=1)
        ks = lax.dynamic_slice_in_dim(aux["kv_seg"], j * bk, bk, axis=1)
        vis = both(vis, (qs[:, :, None] == ks[:, None, :])[:, None, :, None, :])
    if cfg.has_mask:
        m = aux["mask"]                            # [Bm, Km, Tm, Gm, Sm], each 1 or full size
        if m.shape[2] != 1:
            m = lax.dynamic_slice_in_dim(m, i * bq, bq, axis=2)
        if m.shape[4] != 1:
            m = lax.dynamic_slice_in_dim(m, j * bk, bk, axis=4)
        vis = both(vis, m)
    return vis


def _k_blocks_for_q_block(cfg: _FlashConfig, aux, i):
    """Exclusive upper bound of the key blocks query block i must visit (causal/length skipping)."""
    hi = cfg.n_k
    if cfg.causal:   # last query row of block i is (i+1)*bq - 1; it sees keys <= that
        hi = jnp.minimum(hi, ((i + 1) * cfg.block_q + cfg.block_k - 1) // cfg.block_k)
    if cfg.has_lengths:
        longest = jnp.max(aux["kv_lengths"])
        hi = jnp.minimum(hi, (longest + cfg.block_k - 1) // cfg.block_k)
    return hi


def _flash_forward(cfg: _FlashConfig, q, k, v, aux):
    """q `[B, K, Tp, G, H]` (already scaled), k/v `[B, K, Sp, H]`, all f32 -> (o, lse)."""
    B, K, Tp, G, H = q.shape
    bq, bk = cfg.block_q, cfg.block_k

    def q_block(i, carry):
        o, lse = carry
        qi = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=2)

        def k_block(j, c):
            m, l, acc = c
            kj = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
            vj = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
            s = jnp.einsum("bktgh,bksh->bktgs", qi, kj)
            vis = _block_visible(cfg, aux, i, j)
            if vis is not None:
                s = jnp.where(vis, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)   # a row with nothing seen yet
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            l = l * corr + p.sum(axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("bktgs,bksh->bktgh", p, vj)
            return m_new, l, acc

        init = (jnp.full((B, K, bq, G), -jnp.inf, jnp.float32),
                jnp.zeros((B, K, bq, G), jnp.float32),
                jnp.zeros((B, K, bq, G, H), jnp.float32))
        m, l, acc = lax.fori_loop(0, _k_blocks_for_q_block(cfg, aux, i), k_block, init)
        empty = l == 0.0                                     # fully masked row: zeros, lse=+inf
        oi = acc / jnp.where(empty, 1.0, l)[..., None]
        lse_i = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
        o = lax.dynamic_update_slice_in_dim(o, oi, i * bq, axis=2)
        lse = lax.dynamic_update_slice_in_dim(lse, lse_i, i * bq, axis=2)
        return o, lse

    init = (jnp.zeros((B, K, Tp, G, H), jnp.float32), jnp.zeros((B, K, Tp, G), jnp.float32))
    return lax.fori_loop(0, cfg.n_q, q_block, init)


def _flash_backward(cfg: _FlashConfig, q, k, v, aux, o, lse, do):
    """FlashAttention-2 backward: outer loop over key blocks, inner over the query blocks that
    see them; P is recomputed from q, k and the saved lse, never stored whole."""
    B, K, Tp, G, H = q.shape
    Sp = k.shape[2]
    bq, bk = cfg.block_q, cfg.block_k
    delta = jnp.sum(do * o, axis=-1)                          # [B, K, Tp, G]: rowsum(dO * O)

    n_k = cfg.n_k
    if cfg.has_lengths:
        n_k = jnp.minimum(n_k, (jnp.max(aux["kv_lengths"]) + bk - 1) // bk)

    def k_block(j, carry):
        dq, dk, dv = carry
        kj = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
        vj = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)

        def q_block(i, c):
            dq, dkj, dvj = c
            qi = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=2)
            doi = lax.dynamic_slice_in_dim(do, i * bq, bq, axis=2)
            lse_i = lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=2)
            delta_i = lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=2)
            s = jnp.einsum("bktgh,bksh->bktgs", qi, kj)
            vis = _block_visible(cfg, aux, i, j)
            if vis is not None:
                s = jnp.where(vis, s, -jnp.inf)
            p = jnp.exp(s - lse_i[..., None])                 # masked or empty row -> exactly 0
            dvj = dvj + jnp.einsum("bktgs,bktgh->bksh", p, doi)
            dp = jnp.einsum("bktgh,bksh->bktgs", doi, vj)
            ds = p * (dp - delta_i[..., None])
            dkj = dkj + jnp.einsum("bktgs,bktgh->bksh", ds, qi)
            dqi = lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=2)
            dqi = dqi + jnp.einsum("bktgs,bksh->bktgh", ds, kj)
            dq = lax.dynamic_update_slice_in_dim(dq, dqi, i * bq, axis=2)
            return dq, dkj, dvj

        lo = (j * bk) // bq if cfg.causal else 0             # earlier query blocks see nothing
        zeros_kv = jnp.zeros((B, K, bk, H), jnp.float32)
        dq, dkj, dvj = lax.fori_loop(lo, cfg.n_q, q_block, (dq, zeros_kv, zeros_kv))
        dk = lax.dynamic_update_slice_in_dim(dk, dkj, j * bk, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dvj, j * bk, axis=2)
        return dq, dk, dv

    init = (jnp.zeros_like(q), jnp.zeros((B, K, Sp, H), jnp.float32),
            jnp.zeros((B, K, Sp, H), jnp.float32))
    return lax.fori_loop(0, n_k, k_block, init)


def flash_tile_map(T: int, S: int, *, causal: bool = True, block_q: int | None = None,
                   block_k: int | None = None, backend: str | None = None):
    """Which `[block_q, block_k]` tiles `flash_attention` computes, as an int array
    `[n_q, n_k]`: 0 skipped by the loop bounds, 1 computed whole, 2 computed with masked pairs
    (the causal diagonal and internal key padding). The same block plan as the kernel."""
    default_q, default_k = DEFAULT_BLOCKS.get(backend or _backend(),
                                              DEFAULT_BLOCKS["gpu"])
    bq, n_q = _plan_blocks(T, block_q or default_q)
    bk, n_k = _plan_blocks(S, block_k or default_k)
    q_first = np.arange(n_q)[:, None] * bq
    q_last = q_first + bq - 1
    k_first = np.arange(n_k)[None, :] * bk
    k_last = k_first + bk - 1
    tiles = np.ones((n_q, n_k), dtype=int)
    partial = np.broadcast_to(k_last >= S, (n_q, n_k)).copy()
    if causal:
        tiles[k_first > q_last] = 0
        partial |= k_last > q_first
    tiles[(tiles == 1) & partial] = 2
    return tiles


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg, q, k, v, aux):
    return _flash_forward(cfg, q, k, v, aux)[0]


def _flash_core_fwd(cfg, q, k, v, aux):
    o, lse = _flash_forward(cfg, q, k, v, aux)
    return o, (q, k, v, aux, o, lse)


def _flash_core_bwd(cfg, res, do):
    q, k, v, aux, o, lse = res
    dq, dk, dv = _flash_backward(cfg, q, k, v, aux, o, lse, do)
    aux_ct = jax.tree_util.tree_map(lambda _: None, aux)      # masks are not differentiated
    return dq, dk, dv, aux_ct


_flash_core.defvjp(_flash_core_fwd, _flash_core_bwd)


def flash_attention(q, k, v, *, causal: bool = False, mask=None, scale: float | None = None,
                    kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                    block_q: int | None = None, block_k: int | None = None):
    """Memory-efficient exact attention (FlashAttention-2 algorithm) in pure JAX.

    The query axis is cut into blocks of `block_q` rows and the key axis into blocks of
    `block_k`; each (query block, key block) pair is a small matmul whose softmax is merged into
    running row statistics (max and sum), so only `[block_q, block_k]` tiles of logits ever
    exist. The backward pass (a `jax.custom_vjp`) recomputes each tile from q, k and the saved
    log-sum-exp. Key blocks above the causal diagonal, or past the longest `kv_lengths`, are
    skipped by the loop bounds, not masked. Everything is computed in f32; GQA is handled by
    viewing q as `[B, T, K, G, H]`, so K/V are never repeated.

    Memory (forward + backward, excluding inputs/outputs): O(B * N * (T + S) * H) for f32
    copies of q, k, v, o, dO, dq, dk, dv plus O(B * N * block_q * block_k) per tile, i.e.
    linear in sequence length. A dense `mask` argument is itself O(T*S) and is sliced per tile;
    prefer `kv_lengths` or segment ids, which stay O(T + S).

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]` with N a multiple of K. Any float dtype.
      causal, mask, scale, kv_lengths, q_segment_ids, kv_segment_ids: as `reference_attention`
        (`scale` a Python float: it is folded into q before the loops).
      block_q, block_k: tile sizes; default per backend from `DEFAULT_BLOCKS`. T and S need not
        be multiples (inputs are padded internally; padded keys are masked).

    Returns:
      `[B, T, N, H]` in q's dtype; a query row that sees no key is zero.
    """
    _check_shapes(q, k, v)
    mask = _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    validate.optional(validate.positive_int)("block_q", block_q)
    validate.optional(validate.positive_int)("block_k", block_k)
    if T == 0 or S == 0:   # nothing to attend to (or nobody asking): zeros, as empty rows
        return jnp.zeros(q.shape, q.dtype)
    scale = H ** -0.5 if scale is None else float(scale)
    default_q, default_k = DEFAULT_BLOCKS.get(_backend(), DEFAULT_BLOCKS["gpu"])
    bq, n_q = _plan_blocks(T, default_q if block_q is None else block_q)
    bk, n_k = _plan_blocks(S, default_k if block_k is None else block_k)
    Tp, Sp = n_q * bq, n_k * bk

    aux = {}
    if mask is not None:   # [Bm, Nm, Tm, Sm] -> [Bm, Km, Tm, Gm, Sm], padding only full dims
        Bm, Nm, Tm, Sm = mask.shape
        m = mask.reshape(Bm, K, G, Tm, Sm) if Nm == N else mask.reshape(Bm, 1, 1, Tm, Sm)
        m = m.transpose(0, 1, 3, 2, 4)
        m = jnp.pad(m, ((0, 0), (0, 0), (0, Tp - T if Tm != 1 else 0), (0, 0),
                        (0, Sp - S if Sm != 1 else 0)))
        aux["mask"] = m
    if kv_lengths is not None:
        aux["kv_lengths"] = jnp.asarray(kv_lengths, jnp.int32)
    if q_segment_ids is not None:
        aux["q_seg"] = jnp.pad(jnp.asarray(q_segment_ids, jnp.int32), ((0, 0), (0, Tp - T)))
        aux["kv_seg"] = jnp.pad(jnp.asarray(kv_segment_ids, jnp.int32), ((0, 0), (0, Sp - S)))
    cfg = _FlashConfig(causal=bool(causal), T=T, S=S, block_q=bq, block_k=bk, n_q=n_q, n_k=n_k,
                       has_mask=mask is not None, has_lengths=kv_lengths is not None,
                       has_segments=q_segment_ids is not None)

    # [B, T, N, H] -> [B, K, Tp, G, H] (scaled, f32); k, v -> [B, K, Sp, H]. These layout
    # changes are linear, so autodiff transposes them around the custom_vjp.
    q5 = (q.astype(jnp.float32) * scale).reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4)
    q5 = jnp.pad(q5, ((0, 0), (0, 0), (0, Tp - T), (0, 0), (0, 0)))
    k4 = jnp.pad(k.astype(jnp.float32).transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    v4 = jnp.pad(v.astype(jnp.float32).transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    o5 = _flash_core(cfg, q5, k4, v4, aux)
    out = o5[:, :, :T].transpose(0, 2, 1, 3, 4).reshape(B, T, N, H)
    return out.astype(q.dtype)
