"""Parameter counts as pure functions of `ModelConfig`, equal to the real parameter tree.

Shape letters: V vocab, L layers, D hidden_dim, N query heads, K kv heads, H head_dim,
F mlp_dim. The tree this mirrors (`VishwamAI(cfg).abstract_params()`):
  token_embed/embedding [V, D]; position_embed/embedding [max_seq_len, D] (learned positions);
  layer_i/attention/{query [D,N,H], key [D,K,H], value [D,K,H], out [N,H,D]}/{kernel, bias?}
    (q/k/v biases [N,H]/[K,H] with use_bias or qkv_bias; the out bias [D] with use_bias only);
  layer_i/mlp/wi [D,2,F] (gated) or [D,F], wo [F,D] (+ biases);
  layer_i/{pre_attention_norm, pre_mlp_norm}, final_norm: scale [D] (+ bias [D] for LayerNorm
  with use_bias); lm_head/kernel [D, V] when embeddings are untied.
With `scan_layers` the L `layer_i` subtrees are one `layers` subtree whose leaves carry a
leading L axis: the same elements, so every count here holds for both layouts.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from vishwamai.config import DTYPES, PARAM_COMPONENTS, ModelConfig, as_config

# The disjoint components whose sum is 'total' (plot these; the other keys are derived).
COMPONENTS = PARAM_COMPONENTS


def count_params(cfg: ModelConfig | str) -> dict:
    """Parameters per component, summed over all layers.

    Args:
      cfg: a `ModelConfig`, a seed-format dict, or a preset name.

    Returns:
      dict of ints. The keys in `COMPONENTS` are disjoint and sum to 'total':
        embedding (V*D), positions (max_seq_len*D if learned), attention_q/k/v/o (kernels and
        biases over L layers), mlp (wi + wo, biases), norms (2L+1 norms), head (D*V if untied).
      Derived keys: attention (q+k+v+o), per_layer (one block), non_embedding (total minus
      embedding and positions: Kaplan et al.'s N, which keeps an untied head), matmul (weights
      that enter a matmul per token, the tied embedding counted once as the head: the basis of
      the 2*N FLOPs per token rule).
    """
    c = as_config(cfg)
    V, L, D, N, K, H, F = (c.vocab_size, c.num_layers, c.hidden_dim, c.num_heads,
                           c.num_kv_heads, c.head_dim, c.mlp_dim)
    bias = c.use_bias
    qkv_bias = c.attention_qkv_bias
    q = D * N * H + (N * H if qkv_bias else 0)
    k = D * K * H + (K * H if qkv_bias else 0)
    v = D * K * H + (K * H if qkv_bias else 0)
    o = N * H * D + (D if bias else 0)
    wi_cols = 2 * F if c.gated_mlp else F
    dense_mlp = D * wi_cols + F * D + ((wi_cols + D) if bias else 0)
    L_moe = c.num_moe_layers
    moe, moe_active = _moe_ffn(c)
    norm = D * (2 if (c.norm == "layernorm" and bias) else 1)
    qk_norm = {"none": 0, "head": 2 * H, "full": (N + K) * H}[c.qk_norm]
    out = {
        "embedding": V * D,
        "positions": c.max_seq_len * D if c.position == "learned" else 0,
        "attention_q": L * q,
        "attention_k": L * k,
        "attention_v": L * v,
        "attention_o": L * o,
        "mlp": (L - L_moe) * dense_mlp + L_moe * moe,
        "norms": (2 * L + 1) * norm + L * qk_norm,
        "head": 0 if c.tie_embeddings else D * V,
    }
    out["total"] = sum(out[k_] for k_ in COMPONENTS)
    out["attention"] = L * (q + k + v + o)
    out["per_layer"] = q + k + v + o + (moe if L_moe else dense_mlp) + 2 * norm + qk_norm
    out["non_embedding"] = out["total"] - out["embedding"] - out["positions"]
    # MoE blocks: the weights a token meets (router, its K experts, the shared ones).
    out["matmul"] = (L * (D * (N + 2 * K) * H + N * H * D) + (L - L_moe) * (D * wi_cols + F * D)
                     + L_moe * moe_active + D * V)
    return out


def _moe_ffn(c: ModelConfig) -> tuple[int, int]:
    """(parameters, matmul weights one token uses) of one MoE feed-forward; (0, 0) when dense."""
    if not c.num_experts:
        return 0, 0
    D, E, Fe = c.hidden_dim, c.num_experts, c.expert_mlp_dim
    expert = D * (2 * Fe if c.gated_mlp else Fe) + Fe * D
    S = (c.shared_expert_dim or c.num_shared_experts * Fe) if c.num_shared_experts else 0
    shared = D * (2 * S if c.gated_mlp else S) + S * D + (D if c.shared_expert_gate else 0)
    bias = (2 * S if c.gated_mlp else S) + D if (S and c.use_bias) else 0
    router = D * E
    total = router + (E if c.router_bias else 0) + E * expert + shared + bias
    return total, router + c.num_experts_per_tok * expert + shared


def param_bytes(cfg: ModelConfig | str, dtype: str | None = None) -> int:
    """Bytes of all parameters stored in `dtype` (default: the config's `param_dtype`)."""
    c = as_config(cfg)
    return count_params(c)["total"] * bytes_per(dtype or c.param_dtype)


def bytes_per(dtype) -> int:
    """Bytes of one element of `dtype` ('float32', 'bfloat16', 'int8', 'float8_e4m3fn', ...)."""
    name = str(getattr(dtype, "name", dtype))
    if name in DTYPES:
        return np.dtype(DTYPES[name]).itemsize
    if name.startswith("float8") or name in ("int8", "uint8", "fp8"):
        return 1
    return np.dtype(name).itemsize


def tree_param_count(params) -> int:
    """Elements in a parameter pytree (arrays or `ShapeDtypeStruct`s): the independent check."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
