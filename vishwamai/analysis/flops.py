"""FLOPs as pure functions of `ModelConfig`.

Conventions (stated once, used everywhere):
- One multiply-add is 2 FLOPs; a matmul [M,K]@[K,N] is 2*M*K*N. Only matmuls are counted
  (weights and attention); norms, softmax, activations, RoPE and residual adds are a separate
  'elementwise' estimate, reported apart and left out of 'total' unless `include_elementwise`.
- Weight FLOPs: 2 * (matmul parameters) per token: q, k, v, out projections, the MLP and the
  logits matmul (`include_logits`; tied or not, the head is a [D, V] matmul). The embedding
  lookup is a gather: 0 FLOPs.
- Attention FLOPs per layer: QK^T and PV, 2 * 2 * B * N * H * (T*S pairs). With causal
  attention over a sequence of T (S = T) the `convention` decides the pairs counted:
    'causal' (default): T*T/2, half the square (MaxText; what an ideal causal kernel does);
    'full': T*T, the whole square (PaLM's 6N + 12*L*H*T appendix formula, the seed, and what
      the reference einsum and XLA's compiled count actually execute);
    'exact': T*(T+1)/2, the visible (query, key) pairs.
  `causal=False` always counts the full square.
- Training = forward + backward = 3x forward (backward: one matmul for the input gradient and
  one for the weight gradient per forward matmul). These are model FLOPs (MFU).
- Rematerialisation adds forward recomputation (hardware FLOPs, HFU): see `remat_extra_flops`.
"""
from __future__ import annotations

from vishwamai.analysis.params import _moe_ffn, bytes_per, count_params
from vishwamai import validate
from vishwamai.config import REMAT_POLICIES, ModelConfig, as_config

CONVENTIONS = ("causal", "full", "exact")


def _pairs(T: int, S: int, causal: bool, convention: str) -> float:
    """(query, key) pairs one head scores for T queries against S keys."""
    validate.one_of("convention", convention, CONVENTIONS)
    if not causal or convention == "full":
        return T * S
    if convention == "causal":
        return T * S / 2
    # exact: query i (0-based, aligned to the end of S) sees S - T + i + 1 keys.
    return T * (S - T) + T * (T + 1) / 2


def layer_flops(cfg: ModelConfig | str, *, batch: int, seq_len: int, kv_len: int | None = None,
                causal: bool = True, convention: str = "causal") -> dict:
    """Forward matmul FLOPs of one transformer block.

    Args:
      cfg: the model.
      batch, seq_len: B and T (queries).
      kv_len: S, keys attended (default T).
    Returns:
      dict: q_proj, k_proj, v_proj, o_proj, mlp (weight matmuls), attention_scores (QK^T),
      attention_values (PV), weights, attention, total.
    """
    c = as_config(cfg)
    B, T = validate.positive_int("batch", batch), validate.positive_int("seq_len", seq_len)
    S = T if kv_len is None else validate.positive_int("kv_len", kv_len)
    validate.boolean("causal", causal)
    D, N, K, H, F = c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
    BT = B * T
    wi_cols = 2 * F if c.gated_mlp else F
    pairs = _pairs(T, S, causal, convention)
    out = {
        "q_proj": 2 * BT * D * N * H,
        "k_proj": 2 * BT * D * K * H,
        "v_proj": 2 * BT * D * K * H,
        "o_proj": 2 * BT * N * H * D,
        "mlp_in": 2 * BT * D * wi_cols,
        "mlp_out": 2 * BT * F * D,
        "attention_scores": 2 * B * N * H * pairs,
        "attention_values": 2 * B * N * H * pairs,
    }
    if c.num_experts:  # per block on average: K routed experts, shared ones, the router
        L, L_moe = c.num_layers, c.num_moe_layers
        ffn = BT * 2 * ((L - L_moe) * (D * wi_cols + F * D) + L_moe * _moe_ffn(c)[1]) / L
        out["mlp_in"], out["mlp_out"] = ffn * (wi_cols / (wi_cols + F)), ffn * (F / (wi_cols + F))
    out["mlp"] = out["mlp_in"] + out["mlp_out"]
    out["weights"] = (out["q_proj"] + out["k_proj"] + out["v_proj"] + out["o_proj"]
                      + out["mlp"])
    out["attention"] = out["attention_scores"] + out["attention_values"]
    out["total"] = out["weights"] + out["attention"]
    return out


def elementwise_flops(cfg: ModelConfig | str, *, batch: int, seq_len: int,
                      kv_len: int | None = None) -> dict:
    """A rough count of the non-matmul forward FLOPs (one per element per op), for scale only.

    Norms ~5 ops per element, softmax ~6 per score (the reference kernel scores the whole
    square), activation ~10 per element (GELU's tanh form), RoPE ~6 per rotated element,
    residual adds 1. The compiler's count differs in detail; the point is that it is small.
    """
    c = as_config(cfg)
    B, T = batch, seq_len
    S = T if kv_len is None else kv_len
    D, N, K, H, F, L = (c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim,
                        c.num_layers)
    BT = B * T
    norms = 5 * BT * D * (2 * L + 1)
    softmax = 6 * B * N * T * S * L
    act = (11 if c.gated_mlp else 10) * BT * F * L
    rope = 6 * BT * (N + K) * H * L if c.position == "rope" else 0
    residual = 2 * BT * D * L
    out = {"norms": norms, "softmax": softmax, "activation": act, "rope": rope,
           "residual": residual}
    out["total"] = sum(out.values())
    return out


def remat_extra_flops(cfg: ModelConfig | str, remat: str, *, batch: int, seq_len: int,
                      causal: bool = True, convention: str = "causal") -> int:
    """Forward matmul FLOPs recomputed in the backward pass under a remat policy.

    What each policy of `vishwamai.transformer.remat_policy` saves, hence recomputes per block:
      none: everything saved, nothing recomputed.
      full: nothing saved; the block's forward is replayed, except the MLP's output projection,
        whose result the backward pass never needs (JAX drops it as dead code).
      dots: every matmul output saved; only elementwise work is replayed (0 matmul FLOPs).
      dots_no_batch: matmuls without batch dimensions (all weight matmuls) saved; the attention
        einsums (batched over B and heads) are replayed.
      qkv_proj: only the q, k, v projections saved; everything after them is replayed
        (attention, out projection, MLP input projection).
    The embedding and the logits matmul are outside the remat blocks and never replayed.
    """
    validate.one_of("remat", remat, REMAT_POLICIES)
    c = as_config(cfg)
    f = layer_flops(c, batch=batch, seq_len=seq_len, causal=causal, convention=convention)
    per_layer = {
        "none": 0,
        "dots": 0,
        "dots_no_batch": f["attention"],
        "qkv_proj": f["attention"] + f["o_proj"] + f["mlp_in"],
        "full": f["total"] - f["mlp_out"],
    }[remat]
    return c.num_layers * per_layer


def flops(cfg: ModelConfig | str, *, batch: int, seq_len: int, mode: str = "forward",
          causal: bool = True, convention: str = "causal", remat: str | None = None,
          include_logits: bool = True, include_elementwise: bool = False) -> dict:
    """FLOPs of one step over `batch` sequences of `seq_len` tokens.

    Args:
      cfg: the model (its `remat` field is used when `remat` is None).
      batch, seq_len: B and T.
      mode: 'forward' (logits) or 'train' (forward + backward of the loss: 3x forward).
      causal, convention: how attention pairs are counted (module docstring).
      remat: a `REMAT_POLICIES` name; in 'train' mode 'hardware' adds its recomputation.
      include_logits: count the [B,T,D]@[D,V] output matmul.
      include_elementwise: add `elementwise_flops` (x3 in train) into 'total'.

    Returns:
      dict: weights, attention, logits, elementwise (estimate), model (= MFU numerator),
      remat_extra, hardware (= model + remat_extra: HFU numerator), total (= hardware, plus
      elementwise if asked), per_token (total / (B*T)), tokens, and 'layer' (one block's
      forward breakdown, see `layer_flops`).
    """
    validate.one_of("mode", mode, ("forward", "train"))
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    c = as_config(cfg)
    remat = c.remat if remat is None else validate.one_of("remat", remat, REMAT_POLICIES)
    layer = layer_flops(c, batch=batch, seq_len=seq_len, causal=causal, convention=convention)
    L = c.num_layers
    mult = 3 if mode == "train" else 1
    weights = mult * L * layer["weights"]
    attention = mult * L * layer["attention"]
    logits = mult * 2 * batch * seq_len * c.hidden_dim * c.vocab_size if include_logits else 0
    ew = mult * elementwise_flops(c, batch=batch, seq_len=seq_len)["total"]
    model = weights + attention + logits
    extra = (remat_extra_flops(c, remat, batch=batch, seq_len=seq_len, causal=causal,
                               convention=convention) if mode == "train" else 0)
    hardware = model + extra
    total = hardware + (ew if include_elementwise else 0)
    tokens = batch * seq_len
    return {"weights": weights, "attention": attention, "logits": logits, "elementwise": ew,
            "model": model, "remat_extra": extra, "hardware": hardware, "total": total,
            "tokens": tokens, "per_token": total / tokens, "layer": layer}


def hlo_visible_flops(cfg: ModelConfig | str, *, batch: int, seq_len: int, remat: str | None = None,
                      chips: int = 1, splash: bool = False) -> float:
    """Hardware FLOPs per chip of one train step as a compiled program's HLO can count them.

    `flops(mode='train')['hardware']` (remat's replay included, causal attention) divided over
    `chips`; with `splash`, less every attention matmul (forward, backward and remat's replay):
    the splash kernel runs them inside a Mosaic custom call, which XLA's FLOP count cannot see.
    Checked against XLA:TPU's whole-step count of the committed grid rows (`tests/test_grid_rows.py`).
    """
    c = as_config(cfg)
    validate.positive_int("chips", chips)
    remat = c.remat if remat is None else remat
    f = flops(c, batch=batch, seq_len=seq_len, mode="train", remat=remat)
    hidden = 0.0
    if splash:
        per_layer = f["layer"]["attention"]
        # remat's replay recomputes the attention under these policies (`remat_extra_flops`)
        replayed = remat in ("full", "dots_no_batch", "qkv_proj")
        hidden = (3 + replayed) * c.num_layers * per_layer
    return (f["hardware"] - hidden) / chips


def flops_per_token(cfg: ModelConfig | str, seq_len: int, *, mode: str = "train",
                    convention: str = "causal") -> dict:
    """Model FLOPs per token, with the textbook `2N` / `6N` approximation beside it.

    N = matmul parameters (count_params(cfg)['matmul']). Returns exact, approx (2N forward,
    6N train) and attention_share (attention / exact).
    """
    c = as_config(cfg)
    validate.positive_int("seq_len", seq_len)
    f = flops(c, batch=1, seq_len=seq_len, mode=mode, convention=convention, remat="none")
    n = count_params(c)["matmul"]
    approx = (6 if mode == "train" else 2) * n
    return {"exact": f["model"] / seq_len, "approx": approx,
            "attention_share": f["attention"] / f["model"]}


def decode_flops(cfg: ModelConfig | str, batch: int, cache_len: int, *,
                 include_logits: bool = True) -> dict:
    """FLOPs of one decode step: `batch` new tokens, each attending to `cache_len` keys.

    `cache_len` is S, the keys in the KV cache including the new token's own. Every cached key
    is visible, so attention is 4*N*H*S per token per layer with no causal halving.
    Returns: weights, attention, logits, total, per_token.
    """
    c = as_config(cfg)
    validate.positive_int("batch", batch)
    validate.positive_int("cache_len", cache_len)
    layer = layer_flops(c, batch=batch, seq_len=1, kv_len=cache_len, causal=False)
    L = c.num_layers
    logits = 2 * batch * c.hidden_dim * c.vocab_size if include_logits else 0
    out = {"weights": L * layer["weights"], "attention": L * layer["attention"],
           "logits": logits}
    out["total"] = out["weights"] + out["attention"] + logits
    out["per_token"] = out["total"] / batch
    return out


def attention_mlp_crossover(cfg: ModelConfig | str, convention: str = "causal") -> float:
    """Sequence length T at which a block's attention matmuls equal its MLP matmuls.

    Attention per token per layer: 4*N*H*T*c (c = 1/2 causal, 1 full). MLP per token:
    2*D*F*m (m = 3 gated, 2 otherwise). Equal at T = D*F*m / (2*N*H*c). For the seed's family
    (N*H = D, F = 4D, 2 matrices, causal half) that is T = 8D; with the full square, 4D.
    """
    c = as_config(cfg)
    m = 3 if c.gated_mlp else 2
    frac = 1.0 if convention == "full" else 0.5
    return c.hidden_dim * c.mlp_dim * m / (2 * c.num_heads * c.head_dim * frac)


def shape_summary(cfg: ModelConfig | str, seq_len: int | None = None) -> dict:
    """Depth, width and scaling figures of one config, from its real fields.

    (The seed computed these from keys its configs never had and raised KeyError.)
    Returns: D, L, N, K, H, F; attention_width_ratio N*H/D (1 for most models; the seed's XL
    has 1.5); mlp_ratio F/D; gqa_group N/K; depth_to_width L/(D/64) (the seed's ratio: layers
    per 64 channels); params, non_embedding, embedding_share; per_layer params;
    train_flops_per_token (6N + attention at `seq_len`, default max_seq_len, causal half);
    kv_bytes_per_token (all layers, compute dtype).
    """
    c = as_config(cfg)
    T = c.max_seq_len if seq_len is None else seq_len
    p = count_params(c)
    f = flops(c, batch=1, seq_len=T, mode="train", remat="none")
    return {
        "D": c.hidden_dim, "L": c.num_layers, "N": c.num_heads, "K": c.num_kv_heads,
        "H": c.head_dim, "F": c.mlp_dim,
        "attention_width_ratio": c.q_dim / c.hidden_dim,
        "mlp_ratio": c.mlp_dim / c.hidden_dim,
        "gqa_group": c.num_heads // c.num_kv_heads,
        "depth_to_width": c.num_layers / (c.hidden_dim / 64),
        "params": p["total"], "non_embedding": p["non_embedding"],
        "embedding_share": (p["embedding"] + p["positions"] + p["head"]) / p["total"],
        "per_layer": p["per_layer"],
        "train_flops_per_token": f["model"] / T,
        "kv_bytes_per_token": 2 * c.num_layers * c.num_kv_heads * c.head_dim * bytes_per(c.dtype),
    }
