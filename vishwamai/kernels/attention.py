"""Attention ops with the layout of `jax.nn.dot_product_attention`.

Shapes: q `[B, T, N, H]`, k and v `[B, S, K, H]`, output `[B, T, N, H]`, with N = K * G
(grouped-query attention: each of the K key/value heads serves G query heads).

Five implementations behind one entry point, `attention(..., implementation=...)`:

- ``reference``: plain einsum softmax attention in f32; builds the `[T, S]` logits. Ground truth.
- ``flash``: `flash_attention`, blockwise online-softmax attention in pure JAX with a
  FlashAttention-2 style `custom_vjp`: the backward pass recomputes each block from the saved
  output and log-sum-exp, so neither pass keeps a `[T, S]` matrix alive, and key blocks that
  causality hides are never visited. Runs on every backend.
- ``xla`` / ``cudnn``: `jax.nn.dot_product_attention(implementation=...)`. 'xla' materialises the
  logits; 'cudnn' is the fused NVIDIA kernel (bf16/fp16 only).
- ``pallas_tpu``: JAX's Pallas splash-attention TPU kernel (`[B, N, T, H]` layout inside), which
  skips masked blocks too. On CPU it runs only through `pallas_tpu_attention(..., interpret=True)`.
- ``auto``: `select_implementation` picks the best of those for backend, dtype and shape.

Masking, common to all: ``causal`` (query i sees keys j <= i, top-left aligned as in
`jax.nn.dot_product_attention`), ``mask`` (bool broadcastable to `[B, N, T, S]`, True = attend; a
full one is itself O(T*S)), and two O(T + S) forms: ``kv_lengths`` (`[B]`, keys at positions
>= length are padding) and ``q_segment_ids``/``kv_segment_ids`` (`[B, T]`/`[B, S]` ints, a query
sees only keys of its own segment: packed sequences). A query row that sees no key returns zeros
(and zero gradients) in every implementation.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from vishwamai.kernels.target import backend as _backend

from vishwamai.compat import upcast_for_cpu
from vishwamai import validate
from vishwamai.config import ATTENTION_IMPLS

IMPLEMENTATIONS = ATTENTION_IMPLS

# Default (block_q, block_k) of `flash_attention` per backend. The CPU pair was chosen with
# `python -m vishwamai.benchmarks.attention --tune --seq-lens 4096` (2-core AVX-512 host, B=1,
# N=8, H=64, f32, causal fwd+bwd): 512-wide tiles were 1.2-2x slower (a 512x512 f32 tile per
# head no longer stays in cache, and the diagonal wastes more), 128/256 mixes within noise of
# 256x256, which keeps the loop short. GPU/TPU values follow the vendor kernels' tiles; there
# `auto` prefers cuDNN / Pallas anyway.
DEFAULT_BLOCKS = {"cpu": (256, 256), "gpu": (128, 128), "tpu": (512, 512)}

# 'auto' switches from XLA's dense attention to 'flash' from this many query*key pairs on.
# CPU: measured fwd+bwd (causal, f32, N=8, H=64), flash runs faster from T=256 on (its tiles stay
# in cache; the dense paths stream several T*S f32 arrays through memory): on the `small` preset
# at 8 x 256 tokens a train step is ~5% faster and a forward pass ~4% faster than with 'xla'.
# Below that a call takes milliseconds and flash's loops (about a second more to compile) do
# not pay back. GPU (f32, or a head dim cuDNN rejects): the same rule at the longer 512*512,
# where the dense path's T*S scores start to dominate memory.
_CPU_FLASH_MIN_PAIRS = 256 * 256
_GPU_FLASH_MIN_PAIRS = 512 * 512


# --------------------------------------------------------------------------------------------
# Argument checks and mask helpers shared by the implementations
# --------------------------------------------------------------------------------------------

def _check_shapes(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q [B, T, N, H], k/v [B, S, K, H]; got ranks "
            f"q={q.ndim}, k={k.ndim}, v={v.ndim}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k={k.shape}, v={v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must agree on batch B and head dim H; got q={q.shape}, k={k.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"query heads N={q.shape[2]} must be a multiple of key/value heads K={k.shape[2]}")


def _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids):
    """Validates the masking arguments; returns mask as a 4-D bool array (or None)."""
    B, T, N, _ = q.shape
    S = k.shape[1]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = attend); got dtype {mask.dtype}")
        if mask.ndim > 4:
            raise ValueError(f"mask must broadcast to [B, N, T, S]; got shape {mask.shape}")
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        for got, want, name in zip(mask.shape, (B, N, T, S), "BNTS"):
            if got not in (1, want):
                raise ValueError(
                    f"mask shape {mask.shape} does not broadcast to [B, N, T, S]="
                    f"{(B, N, T, S)} (dimension {name})")
    if kv_lengths is not None and jnp.shape(kv_lengths) != (B,):
        raise ValueError(f"kv_lengths must have shape [B]=({B},); got {jnp.shape(kv_lengths)}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if q_segment_ids is not None:
        if jnp.shape(q_segment_ids) != (B, T) or jnp.shape(kv_segment_ids) != (B, S):
            raise ValueError(
                f"segment ids must have shapes q [B, T]={(B, T)} and kv [B, S]={(B, S)}; got "
                f"{jnp.shape(q_segment_ids)} and {jnp.shape(kv_segment_ids)}")
    return mask


def _dense_visible(B, T, S, *, causal, mask, kv_lengths, q_segment_ids, kv_segment_ids):
    """The full visibility pattern as a bool array broadcastable to `[B, N, T, S]` (O(T*S))."""
    visible = jnp.ones((1, 1, T, S), dtype=bool)
    if causal:
        visible = visible & (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])
    if mask is not None:
        visible = visible & mask
    if kv_lengths is not None:
        visible = visible & (jnp.arange(S)[None, :] < jnp.asarray(kv_lengths)[:, None])[:, None, None, :]
    if q_segment_ids is not None:
        same = jnp.asarray(q_segment_ids)[:, :, None] == jnp.asarray(kv_segment_ids)[:, None, :]
        visible = visible & same[:, None]
    return visible


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
    if T == 0 or S == 0:   # nothing to attend to (or nobody asking): zeros, as empty rows
        return jnp.zeros(q.shape, q.dtype)
    scale = H ** -0.5 if scale is None else float(scale)
    default_q, default_k = DEFAULT_BLOCKS.get(_backend(), DEFAULT_BLOCKS["gpu"])
    bq, n_q = _plan_blocks(T, block_q or default_q)
    bk, n_k = _plan_blocks(S, block_k or default_k)
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


# --------------------------------------------------------------------------------------------
# xla / cudnn through jax.nn.dot_product_attention
# --------------------------------------------------------------------------------------------

def _jax_nn_attention(q, k, v, *, causal, mask, scale, kv_lengths, q_segment_ids,
                      kv_segment_ids, implementation):
    """`jax.nn.dot_product_attention` plus this module's contract (empty rows give zeros)."""
    B, T, N, H = q.shape
    S = k.shape[1]
    if implementation == "cudnn":
        reason = _cudnn_unsupported_reason(q, k)
        if reason:
            raise ValueError(f"implementation='cudnn' cannot run this call: {reason}")
    dense = mask
    if q_segment_ids is not None:   # jax.nn has no segment ids: they become a dense mask
        same = jnp.asarray(q_segment_ids)[:, :, None] == jnp.asarray(kv_segment_ids)[:, None, :]
        dense = same[:, None] if dense is None else dense & same[:, None]
    lengths = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32)
    dtype = q.dtype
    q, k, v = upcast_for_cpu(q, k, v)       # the bf16 dot jax.nn asks for, where a CPU can't
    out = jax.nn.dot_product_attention(
        q, k, v, mask=dense, scale=scale, is_causal=causal,
        key_value_seq_lengths=lengths, implementation=implementation).astype(dtype)
    # jax.nn gives a fully masked row the mean of v (uniform softmax over a large negative
    # logit); this module's contract is zeros. The where also zeroes those rows' gradients.
    if dense is not None:
        visible = _dense_visible(B, T, S, causal=causal, mask=dense, kv_lengths=kv_lengths,
                                 q_segment_ids=None, kv_segment_ids=None)
        row_BNT = jnp.broadcast_to(visible.any(-1), (B, visible.shape[1], T))
        out = jnp.where(row_BNT.transpose(0, 2, 1)[..., None], out, 0)
    elif lengths is not None:
        out = jnp.where((lengths > 0)[:, None, None, None], out, 0)
    return out


def _cudnn_unsupported_reason(q, k) -> str | None:
    """Why cuDNN's fused attention cannot take these inputs (None when it can)."""
    if _backend() != "gpu":
        return f"it needs an NVIDIA GPU, the backend is {_backend()!r}"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN flash attention takes bf16/fp16 inputs, got {q.dtype}"
    H = q.shape[-1]
    if H % 8 or H > 128:
        return f"cuDNN needs head dim H <= 128 (256 on Hopper) and a multiple of 8, got {H}"
    return None


# --------------------------------------------------------------------------------------------
# pallas_tpu: JAX's splash-attention kernel
# --------------------------------------------------------------------------------------------

_TPU_LANES = 128


@functools.lru_cache(maxsize=64)
def _splash_kernel(N: int, Tp: int, Sp: int, causal: bool, offset: int, block: tuple,
                   interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    bq, bkv = block
    if causal:
        head = sa.CausalMask((Tp, Sp), offset=offset)
    else:
        head = sa.FullMask((Tp, Sp))
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                          block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                          block_q_dq=bq, block_kv_dq=bkv)
    return sa.make_splash_mha_single_device(sa.MultiHeadMask([head] * N), block_sizes=sizes,
                                            interpret=interpret)


def _largest_block(length: int, cap: int) -> int:
    for b in (cap, 512, 256, _TPU_LANES):
        if b <= cap and length % b == 0:
            return b
    return _TPU_LANES


def _key_padding_from_mask(mask, B, S):
    """A mask that only varies along S (shape [B|1, 1, 1, S]) as a [B, S] key-validity array."""
    if mask is None:
        return None
    if mask.shape[1] != 1 or mask.shape[2] != 1:
        raise ValueError(
            "implementation='pallas_tpu' takes causal, kv_lengths, segment ids and key-padding "
            f"masks of shape [B, 1, 1, S]; got a mask of shape {mask.shape}. Use "
            "implementation='flash' (or 'xla'/'reference') for general masks.")
    return jnp.broadcast_to(mask[:, 0, 0, :], (B, S))


def pallas_tpu_attention(q, k, v, *, causal: bool = False, mask=None, scale: float | None = None,
                         kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                         block: int = 512, interpret: bool = False):
    """Attention through JAX's Pallas splash-attention TPU kernel, in this module's layout.

    Adapts `[B, T, N, H]` to the kernel's `[N, T, H]` per batch element (vmapped over B), pads
    T and S to multiples of 128 and expresses padding, `kv_lengths`, key-padding masks and
    segment ids as the kernel's segment ids. GQA is native (K/V heads are not repeated). Rows
    that see no key are routed to one extra all-zero key in front (causal offset 1), so they
    return exact zeros and no NaN reaches the backward pass.

    Args:
      q, k, v, causal, mask, scale, kv_lengths, q_segment_ids, kv_segment_ids: as `attention`;
        `mask` must vary along S only (a `[B, 1, 1, S]` key-padding mask).
      block: largest tile size tried (512, 256 or 128, dividing the padded lengths).
      interpret: run the kernel in Pallas' TPU interpreter (works on CPU; slow, for tests).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    _check_shapes(q, k, v)
    mask = _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    if _backend() != "tpu" and not interpret:
        raise ValueError(
            f"implementation='pallas_tpu' needs a TPU (backend is {_backend()!r}); "
            "pass interpret=True to run the kernel in the Pallas interpreter")
    local = functools.partial(_pallas_tpu_local, causal=causal, scale=scale, block=block,
                              interpret=interpret)
    split = None if interpret else _mesh_split(q.shape[0], q.shape[2], k.shape[2])
    if split is None:
        return local(q, k, v, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    # A Mosaic kernel is opaque to the SPMD partitioner: under a device mesh each device runs
    # it on its own batch rows and heads, inside a shard_map.
    b_axes, h_axes = split
    qkv = P(b_axes, None, h_axes, None)
    extras = (mask, kv_lengths, q_segment_ids, kv_segment_ids)
    specs = tuple(None if x is None else (
        P(b_axes if x.shape[0] == q.shape[0] else None) if x.ndim >= 1 else P()) for x in extras)
    if mask is not None and mask.shape[0] != q.shape[0]:
        specs = (P(),) + specs[1:]
    present = [i for i, x in enumerate(extras) if x is not None]

    def body(q, k, v, *given):
        full = [None] * 4
        for i, x in zip(present, given):
            full[i] = x
        return local(q, k, v, *full)

    fn = jax.shard_map(body, in_specs=(qkv, qkv, qkv) + tuple(specs[i] for i in present),
                       out_specs=qkv, check_vma=False)
    return fn(q, k, v, *(extras[i] for i in present))


def _mesh_split(B: int, N: int, K: int):
    """`(batch mesh axes, head mesh axes)` to run a kernel per device under the current mesh, or
    None with no mesh (or one device). Heads go on the 'tensor' axis when N and K divide by it;
    the batch on every other axis of size > 1 when B divides by their product (the layout of
    `vishwamai.sharding`); what does not divide stays whole on each device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or getattr(mesh, "empty", True) or mesh.size <= 1:
        return None
    shape = dict(zip(mesh.axis_names, mesh.axis_sizes))
    t = shape.get("tensor", 1)
    h_axes = "tensor" if t > 1 and N % t == 0 and K % t == 0 else None
    b = tuple(a for a in mesh.axis_names if a != "tensor" and shape[a] > 1)
    ways = 1
    for a in b:
        ways *= shape[a]
    b_axes = (b[0] if len(b) == 1 else b) if b and B % ways == 0 else None
    if b_axes is None and h_axes is None:
        return (None, None)
    return (b_axes, h_axes)


def _pallas_tpu_local(q, k, v, mask, kv_lengths, q_segment_ids, kv_segment_ids, *, causal,
                      scale, block, interpret):
    """`pallas_tpu_attention` on one device's arrays."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    B, T, N, H = q.shape
    S = k.shape[1]
    scale = H ** -0.5 if scale is None else float(scale)

    key_ok = _key_padding_from_mask(mask, B, S)
    if kv_lengths is not None:
        in_len = jnp.arange(S)[None, :] < jnp.asarray(kv_lengths)[:, None]
        key_ok = in_len if key_ok is None else key_ok & in_len
    maybe_empty = key_ok is not None or q_segment_ids is not None
    q_seg = jnp.zeros((B, T), jnp.int32) if q_segment_ids is None else jnp.asarray(q_segment_ids, jnp.int32)
    kv_seg = jnp.zeros((B, S), jnp.int32) if kv_segment_ids is None else jnp.asarray(kv_segment_ids, jnp.int32)
    lowest = jnp.minimum(q_seg.min(), kv_seg.min())
    dummy_id, pad_id = lowest - 1, lowest - 2        # ids no real token uses
    if key_ok is not None:
        kv_seg = jnp.where(key_ok, kv_seg, pad_id)

    front = 1 if maybe_empty else 0                  # one all-zero key that empty rows can see
    Tp = -(-T // _TPU_LANES) * _TPU_LANES
    Sp = -(-(S + front) // _TPU_LANES) * _TPU_LANES
    if maybe_empty:
        empty = ~_rows_see_a_key(q_seg, kv_seg, causal)
        q_seg = jnp.where(empty, dummy_id, q_seg)
    q_seg = jnp.pad(q_seg, ((0, 0), (0, Tp - T)))
    if front:   # padded query rows see only the zero key: no row of the kernel is empty
        q_seg = jnp.where(jnp.arange(Tp) >= T, dummy_id, q_seg)
    kv_seg = jnp.pad(kv_seg, ((0, 0), (front, Sp - S - front)))
    kv_seg = jnp.where((jnp.arange(Sp) < front) | (jnp.arange(Sp) >= S + front), pad_id, kv_seg)
    if front:
        kv_seg = kv_seg.at[:, 0].set(dummy_id)
    need_segments = maybe_empty or Sp != S

    q_bnth = jnp.pad((q.astype(jnp.float32) * scale).astype(q.dtype),
                     ((0, 0), (0, Tp - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    k_bnth = jnp.pad(k, ((0, 0), (front, Sp - S - front), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    v_bnth = jnp.pad(v, ((0, 0), (front, Sp - S - front), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    kernel = _splash_kernel(N, Tp, Sp, bool(causal), front,
                            (_largest_block(Tp, block), _largest_block(Sp, block)), bool(interpret))
    if need_segments:
        out = jax.vmap(lambda a, b, c, qi, ki: kernel(a, b, c, sa.SegmentIds(q=qi, kv=ki)))(
            q_bnth, k_bnth, v_bnth, q_seg, kv_seg)
    else:
        out = jax.vmap(kernel)(q_bnth, k_bnth, v_bnth)
    return out.transpose(0, 2, 1, 3)[:, :T].astype(q.dtype)


def _rows_see_a_key(q_seg, kv_seg, causal):
    """[B, T] bool: does query t see at least one key with its segment id (at position <= t if
    causal)? O((T + S) log S) via a sort, never a [T, S] comparison."""
    S = kv_seg.shape[1]

    def one(qs, ks):
        pos = jnp.arange(S)
        order = jnp.lexsort((pos, ks))               # by segment id, then position
        sorted_ids, sorted_pos = ks[order], pos[order]
        idx = jnp.clip(jnp.searchsorted(sorted_ids, qs, side="left"), 0, S - 1)
        found = sorted_ids[idx] == qs
        if causal:
            found = found & (sorted_pos[idx] <= jnp.arange(qs.shape[0]))
        return found

    return jax.vmap(one)(q_seg, kv_seg)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

def _cudnn_present() -> bool:
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return False
    if not devices or "cuda" not in getattr(devices[0].client, "platform_version", "").lower():
        return False
    try:
        major, minor = (int(x) for x in devices[0].compute_capability.split("."))
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (8, 0)


def available_implementations(backend: str | None = None) -> tuple[str, ...]:
    """Names `attention` accepts on `backend` (default: JAX's default backend).

    'reference', 'flash' and 'xla' run everywhere; 'cudnn' needs an NVIDIA GPU of compute
    capability >= 8.0 (Ampere or later); 'pallas_tpu' needs a TPU. 'auto' is always accepted.
    For the running backend the GPU is inspected; for another one (planning for a machine you
    are not on) the answer follows from the backend name alone.
    """
    backend = backend or _backend()
    names = ["auto", "reference", "flash", "xla"]
    if backend in ("gpu", "cuda"):
        if backend != jax.default_backend() or _cudnn_present():
            names.append("cudnn")
    if backend == "tpu":
        names.append("pallas_tpu")
    return tuple(names)


def select_implementation(q, k, *, mask=None, q_segment_ids=None, backend: str | None = None) -> str:
    """What `implementation='auto'` runs for these inputs.

    TPU: the Pallas splash kernel unless a general (non key-padding) mask is given, then
    'flash'. NVIDIA GPU: cuDNN for bf16/fp16 with a supported head dim, else 'flash' for long
    sequences (T*S >= 512*512) and 'xla' for short ones. CPU: 'flash' from T*S >= 256*256
    (where it is faster and far smaller than XLA's dense path), 'xla' below (where its compile
    time dominates).
    """
    backend = backend or _backend()
    T, S = q.shape[1], k.shape[1]
    long = T * S >= (_CPU_FLASH_MIN_PAIRS if backend == "cpu" else _GPU_FLASH_MIN_PAIRS)
    general_mask = mask is not None and (jnp.ndim(mask) >= 3 and (
        jnp.shape(mask)[-2] != 1 or (jnp.ndim(mask) == 4 and jnp.shape(mask)[1] != 1)))
    if backend == "tpu":
        return "flash" if general_mask else "pallas_tpu"
    if backend in ("gpu", "cuda") and "cudnn" in available_implementations(backend):
        # cuDNN takes masks as a dense bias: with segment ids or a general mask on a long
        # sequence the O(T*S) bias costs more than flash's tiles.
        dense_bias = general_mask or q_segment_ids is not None
        if (q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0
                and q.shape[-1] <= 128 and not (dense_bias and long)):
            return "cudnn"
    return "flash" if long else "xla"


def attention(q, k, v, *, causal: bool = False, mask=None, scale: float | None = None,
              kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
              implementation: str = "reference"):
    """The one attention entry point the model calls; dispatches on `implementation`.

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]`, N a multiple of K.
      causal, mask, scale, kv_lengths, q_segment_ids, kv_segment_ids: see the module docstring.
      implementation: one of `IMPLEMENTATIONS`; 'auto' picks with `select_implementation`.

    Returns:
      `[B, T, N, H]` in q's dtype; rows that see no key are zero in every implementation.

    Raises:
      ValueError: unknown implementation, or one that cannot run on this backend (the message
        lists those that can), or inputs it does not support.
    """
    if implementation not in IMPLEMENTATIONS:
        raise validate.InputError(
            f"unknown attention implementation {implementation!r}; accepted: {IMPLEMENTATIONS}")
    backend = _backend()
    here = available_implementations(backend)
    if implementation not in here:
        raise validate.InputError(
            f"attention implementation {implementation!r} cannot run on backend {backend!r}; "
            f"available here: {here}")
    _check_shapes(q, k, v)
    mask = _check_masks(q, k, mask, kv_lengths, q_segment_ids, kv_segment_ids)
    if implementation == "auto":
        implementation = select_implementation(q, k, mask=mask, q_segment_ids=q_segment_ids,
                                               backend=backend)
    kw = dict(causal=causal, mask=mask, scale=scale, kv_lengths=kv_lengths,
              q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    if implementation == "reference":
        return reference_attention(q, k, v, **kw)
    if implementation == "flash":
        return flash_attention(q, k, v, **kw)
    if implementation in ("xla", "cudnn"):
        return _jax_nn_attention(q, k, v, implementation=implementation, **kw)
    return pallas_tpu_attention(q, k, v, **kw)
