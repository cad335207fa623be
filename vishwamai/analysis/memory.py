"""Memory as pure functions of `ModelConfig`: parameters, gradients, optimizer state, activations
per remat policy, attention scores, logits and the KV cache. All results are bytes.

Conventions:
- Bytes by dtype: parameters and gradients in `param_dtype`; activations in the compute `dtype`
  except where the model computes in f32 (norm statistics and normalised values, softmax, the
  reference attention's upcast keys/values and scores, the loss), which are 4 bytes whatever
  the compute dtype.
- Optimizer 'adamw': first and second moments in f32 (8 B/param); when parameters are stored
  in bf16/fp16, an f32 master copy as well (4 B/param): the mixed-precision recipe.
  'adamw_param_dtype': what `vishwamai.train.make_optimizer` (optax's adamw) holds: both moments
  in the parameters' own dtype and no master copy (4 B/param with bf16 parameters). 'sgd': nothing. 'adafactor': factored
  second moments, ~ (rows + cols) per matrix, counted as 4*(D+F) per layer.
- Saved activations ('saved') are the residuals the forward pass hands to the backward pass:
  exactly the tensors `jax.vjp` keeps for this model under each `remat` policy. The test suite
  checks them against the compiler (`memory_analysis()` of the compiled forward half).
- 'workspace' is the extra live memory while the backward pass runs: the layer being
  differentiated (recomputed first when remat is on), the gradient buffers of its scores
  (reference attention) and the loss's probabilities and logits gradient. It is an estimate,
  not compiler-checked term by term: XLA's scheduler and fusion decide it (see Chapter 4).
"""
from __future__ import annotations

from vishwamai.analysis.params import bytes_per, count_params
from vishwamai import validate
from vishwamai.config import ATTENTION_IMPLS, REMAT_POLICIES, ModelConfig, as_config

OPTIMIZERS = ("adamw", "adamw_param_dtype", "sgd", "adafactor", "none")
ATTENTIONS = ("reference", "xla", "flash")
LOSSES = ("full", "chunked")
F32 = 4


def _attention_kind(cfg: ModelConfig, attention: str | None) -> str:
    """'reference' | 'xla' | 'flash': how the attention op stores its scores."""
    a = attention or cfg.attention_impl
    validate.one_of("attention", a, ATTENTION_IMPLS)
    if a in ("reference", "xla", "flash"):
        return a
    if a in ("cudnn", "pallas_tpu"):
        return "flash"  # fused kernels: no [B,N,T,S] scores in memory
    # 'auto' decides at run time by backend and shape; flash-like memory is the honest default
    # for long sequences, where the question matters.
    return "flash"


def _mlp_saved(cfg: ModelConfig, c: int) -> float:
    """Bytes per token per layer the MLP keeps without remat (activation internals)."""
    F = cfg.mlp_dim
    if cfg.mlp_activation == "relu":
        return F * (2 * c + 1)          # pre-activation, output, and the bool (x > 0) mask
    if cfg.gated_mlp:
        # The gated product has its own backward (`layers.mlp._gated`): it keeps only the
        # [.., 2, F] gate/up projection, and wo keeps its input (the product).
        return 3 * F * c
    return 6 * F * c                    # gelu (tanh form) internals and the product


def saved_per_layer(cfg: ModelConfig | str, *, batch: int, seq_len: int,
                    remat: str | None = None, attention: str | None = None) -> dict:
    """Residuals one transformer block keeps for its backward pass, in bytes, by tensor family.

    Args:
      cfg: the model (compute dtype from `cfg.dtype`).
      batch, seq_len: B and T (S = T: training is self-attention over the sequence).
      remat: a `REMAT_POLICIES` name (default `cfg.remat`).
      attention: 'reference' (scores [B,N,T,S] in f32 are stored), 'xla' (likewise, one fewer),
        'flash' (only per-row statistics); default from `cfg.attention_impl`.

    Returns:
      dict with 'residual' ([B,T,D] tensors), 'mlp' ([B,T,F]), 'heads' (q/k/v/attention-output
      tensors), 'rope' (sin/cos tables), 'scores' ([B,N,T,S]), 'rows' ([B,N,T] softmax
      statistics), 'tokens' (per-token norm statistics) and 'total'.

    What each policy keeps (c = compute-dtype bytes, f = 4):
      none: residual stream and norm values 2c+6f per D; MLP internals (see `_mlp_saved`);
        q c+f per N*H (projection, attention output in f32; flash: c+2f); k, v 2f per K*H;
        RoPE sin/cos 4f per H/2; scores 4f+1 (logits, masked, exp, probabilities + bool mask;
        'xla' 3f+1; flash none); row statistics 5f+2 per (N, T) (flash: f, the log-sum-exp).
      full: only the block input, c per D.
      dots: every matmul output: block input and out-projection output (2c per D), MLP input
        projection (c per F, 2F gated), q (c) and the PV product (f) per N*H (flash: q only),
        k, v (2c per K*H), the QK^T scores (f per score; flash: none).
      dots_no_batch: as dots without the batched attention matmuls (scores and PV product).
      qkv_proj: block input (c per D) and the named q, k, v projections.
    """
    c = as_config(cfg)
    remat = c.remat if remat is None else remat
    validate.one_of("remat", remat, REMAT_POLICIES)
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    att = _attention_kind(c, attention)
    if att not in ATTENTIONS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTIONS}")
    cb = bytes_per(c.dtype)
    B, T = batch, seq_len
    BT = B * T
    D, N, K, H, F = c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
    wi_cols = 2 * F if c.gated_mlp else F
    score_elems = B * N * T * T
    row_elems = B * N * T
    out = dict.fromkeys(("residual", "mlp", "heads", "rope", "scores", "rows", "tokens"), 0)
    if remat == "none":
        out["residual"] = BT * D * (2 * cb + 6 * F32)
        out["mlp"] = BT * _mlp_saved(c, cb)
        q_bytes = cb + (2 * F32 if att == "flash" else F32)
        out["heads"] = BT * (N * H * q_bytes + 2 * K * H * F32)
        out["rope"] = BT * 4 * (H // 2) * F32 if c.position == "rope" else 0
        out["scores"] = {"reference": 4 * F32 + 1, "xla": 3 * F32 + 1, "flash": 0}[att] * score_elems
        out["rows"] = {"reference": 5 * F32 + 2, "xla": 2 * F32, "flash": F32}[att] * row_elems
        out["tokens"] = BT * 4 * F32
    elif remat == "full":
        out["residual"] = BT * D * cb
    elif remat in ("dots", "dots_no_batch"):
        out["residual"] = BT * 2 * D * cb
        out["mlp"] = BT * wi_cols * cb
        pv = F32 if (remat == "dots" and att != "flash") else 0
        out["heads"] = BT * (N * H * (cb + pv) + 2 * K * H * cb)
        if remat == "dots" and att != "flash":
            out["scores"] = F32 * score_elems
    else:  # qkv_proj
        out["residual"] = BT * D * cb
        out["heads"] = BT * (N + 2 * K) * H * cb
    out["total"] = sum(out.values())
    return out


def saved_outside_layers(cfg: ModelConfig | str, *, batch: int, seq_len: int,
                         loss: str = "full") -> dict:
    """Residuals kept outside the blocks: embedding output, final norm, and the loss.

    'full' loss keeps the f32 log-probabilities [B,T,V]; 'chunked' keeps none (each chunk's
    logits live inside one step of the loss's scan) but keeps the f32 gradient of the hidden
    states [B,T,D] it computed on the way.
    """
    validate.one_of("loss", loss, LOSSES)
    c = as_config(cfg)
    cb = bytes_per(c.dtype)
    BT = batch * seq_len
    D, V = c.hidden_dim, c.vocab_size
    out = {
        "residual": BT * D * (cb + 3 * F32),
        "logits": BT * V * F32 if loss == "full" else 0,
        "hidden_grad": BT * D * F32 if loss == "chunked" else 0,
        "tokens": BT * (3 * F32 + 4 * (3 if c.position == "learned" else 2)),
    }
    out["total"] = sum(out.values())
    return out


def activation_bytes(cfg: ModelConfig | str, *, batch: int, seq_len: int,
                     remat: str | None = None, attention: str | None = None,
                     loss: str = "full", chunk_size: int = 128) -> dict:
    """Saved activations of a training step, and the backward pass's workspace.

    Returns:
      dict: per_layer (dict from `saved_per_layer`), layers (L x per-layer total), outside
      (`saved_outside_layers` total), saved (layers + outside), workspace (estimate, module
      docstring), peak (saved + workspace).
    """
    c = as_config(cfg)
    remat = c.remat if remat is None else remat
    per = saved_per_layer(c, batch=batch, seq_len=seq_len, remat=remat, attention=attention)
    outside = saved_outside_layers(c, batch=batch, seq_len=seq_len, loss=loss)
    layers = c.num_layers * per["total"]
    # Backward workspace: the block being differentiated holds its full residual set (it is
    # recomputed first under remat; without remat it is already counted in 'saved'), plus two
    # score-sized gradient buffers for dense attention, plus the loss's own: with full logits
    # the probabilities and the logits gradient, two [B,T,V] f32 buffers beside the saved
    # log-probabilities; chunked, two [B,chunk,V] blocks.
    full_layer = saved_per_layer(c, batch=batch, seq_len=seq_len, remat="none",
                                 attention=attention)
    att = _attention_kind(c, attention)
    score_grads = 2 * F32 * batch * c.num_heads * seq_len * seq_len if att != "flash" else 0
    recompute = full_layer["total"] if remat != "none" else 0
    if loss == "full":
        logit_grad = 2 * batch * seq_len * c.vocab_size * F32
    else:
        logit_grad = 2 * batch * min(chunk_size, seq_len) * c.vocab_size * F32
    workspace = recompute + score_grads + logit_grad
    saved = layers + outside["total"]
    return {"per_layer": per, "layers": layers, "outside": outside["total"], "saved": saved,
            "workspace": workspace, "peak": saved + workspace}


def optimizer_bytes(cfg: ModelConfig | str, optimizer: str = "adamw") -> dict:
    """Optimizer state bytes: moments and (for low-precision parameters) f32 master weights."""
    validate.one_of("optimizer", optimizer, OPTIMIZERS)
    c = as_config(cfg)
    n = count_params(c)["total"]
    low_precision = bytes_per(c.param_dtype) < F32
    moments = {"adamw": 2 * F32 * n, "adamw_param_dtype": 2 * bytes_per(c.param_dtype) * n,
               "sgd": 0, "none": 0,
               "adafactor": F32 * c.num_layers * 4 * (c.hidden_dim + c.mlp_dim)}[optimizer]
    master = F32 * n if (low_precision and optimizer not in ("none", "adamw_param_dtype")) else 0
    return {"moments": moments, "master": master, "total": moments + master}


def kv_cache_bytes(cfg: ModelConfig | str, batch: int, seq_len: int, dtype=None) -> int:
    """Bytes of a KV cache for `batch` sequences of `seq_len` positions.

    2 (K and V) * L * B * S * K_heads * H * bytes(dtype); dtype defaults to the compute dtype,
    which is what `VishwamAI.init_cache` allocates. GQA shrinks it by N/K against multi-head.
    """
    c = as_config(cfg)
    return (2 * c.num_layers * batch * seq_len * c.num_kv_heads * c.head_dim
            * bytes_per(dtype or c.dtype))


def logits_bytes(cfg_or_vocab, batch: int, seq_len: int, dtype="float32") -> int:
    """Bytes of full logits [B, T, V] (the seed's OOM buffer: 32*512*32000*4 = 2,097,152,000)."""
    V = cfg_or_vocab if isinstance(cfg_or_vocab, int) else as_config(cfg_or_vocab).vocab_size
    return batch * seq_len * V * bytes_per(dtype)


def attention_scores_bytes(cfg: ModelConfig | str, batch: int, seq_len: int,
                           kv_len: int | None = None, dtype="float32") -> int:
    """Bytes of one layer's score matrix [B, N, T, S] (what a dense attention materialises)."""
    c = as_config(cfg)
    S = seq_len if kv_len is None else kv_len
    return batch * c.num_heads * seq_len * S * bytes_per(dtype)


def memory(cfg: ModelConfig | str, *, batch: int, seq_len: int, mode: str = "train",
           remat: str | None = None, optimizer: str = "adamw", loss: str = "full",
           attention: str | None = None, cache_len: int | None = None,
           chunk_size: int = 128) -> dict:
    """Bytes of one training step or of inference, by part, on one device (no sharding).

    Args:
      cfg: the model (`param_dtype` for weights/grads, `dtype` for activations).
      batch, seq_len: B and T.
      mode: 'train' (params + grads + optimizer + saved activations + backward workspace) or
        'inference' (params + KV cache of `cache_len` positions (default T; 0 for a plain
        forward pass) + one block's forward working set + the logits [B,T,V] in the compute
        dtype, or one chunk of them with loss='chunked').
      remat, optimizer, loss, attention: see `activation_bytes` and `optimizer_bytes`.

    Returns:
      dict of bytes: params, grads, optimizer, activations (saved), workspace, kv_cache,
      logits (inference output; in training the loss's logits are in activations/workspace),
      total.
    """
    validate.one_of("mode", mode, ("train", "inference"))
    validate.positive_int("batch", batch)
    validate.positive_int("seq_len", seq_len)
    if cache_len is not None:
        validate.non_negative_int("cache_len", cache_len)
    validate.positive_int("chunk_size", chunk_size)
    validate.one_of("optimizer", optimizer, OPTIMIZERS)
    c = as_config(cfg)
    n = count_params(c)["total"]
    pb = bytes_per(c.param_dtype)
    out = {"params": n * pb, "grads": 0, "optimizer": 0, "activations": 0, "workspace": 0,
           "kv_cache": 0, "logits": 0}
    if mode == "train":
        act = activation_bytes(c, batch=batch, seq_len=seq_len, remat=remat,
                               attention=attention, loss=loss, chunk_size=chunk_size)
        out["grads"] = n * pb
        out["optimizer"] = optimizer_bytes(c, optimizer)["total"]
        out["activations"] = act["saved"]
        out["workspace"] = act["workspace"]
    else:
        S = seq_len if cache_len is None else cache_len
        out["kv_cache"] = kv_cache_bytes(c, batch, S)
        out["workspace"] = forward_working_set(c, batch=batch, seq_len=seq_len,
                                               attention=attention)
        rows = seq_len if loss == "full" else min(chunk_size, seq_len)
        out["logits"] = logits_bytes(c, batch, rows, c.dtype)
    out["total"] = sum(out.values())
    return out


def forward_working_set(cfg: ModelConfig | str, *, batch: int, seq_len: int,
                        kv_len: int | None = None, attention: str | None = None) -> int:
    """Largest live set of one block's forward pass without autodiff (inference), in bytes.

    The residual stream, the normalised input and the block output ([B,T,D] x 3), q/k/v
    ([B,T,(N+2K)H]), the MLP input projection and activation ([B,T,F] x 2, gated 3), in the
    compute dtype; with dense attention, the f32 scores and probabilities [B,N,T,S] x 2.
    """
    c = as_config(cfg)
    cb = bytes_per(c.dtype)
    S = seq_len if kv_len is None else kv_len
    BT = batch * seq_len
    wi = 3 if c.gated_mlp else 2
    dense = _attention_kind(c, attention) != "flash"
    scores = 2 * F32 * batch * c.num_heads * seq_len * S if dense else 0
    return (BT * (3 * c.hidden_dim + (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                  + wi * c.mlp_dim) * cb + scores)
