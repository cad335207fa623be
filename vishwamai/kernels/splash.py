"""The attention implementations that call library kernels: 'xla' and 'cudnn' through
`jax.nn.dot_product_attention` (with this package's contract that a row seeing no key is zero),
and 'pallas_tpu', JAX's Pallas splash-attention TPU kernel adapted to the `[B, T, N, H]` layout
(padding, key masks and segment ids as the kernel's segment ids; a `shard_map` under a mesh).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vishwamai.compat import upcast_for_cpu
from vishwamai.kernels.attention_checks import _check_masks, _check_shapes, _dense_visible
from vishwamai.kernels.target import backend as _backend


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
