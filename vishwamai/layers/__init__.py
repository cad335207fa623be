"""Layers split by concern: embeddings, norms, RoPE, linear projections, MLP, attention."""
from vishwamai.layers.linear import Linear
from vishwamai.layers.norms import LayerNorm, RMSNorm, make_norm
from vishwamai.layers.embeddings import Embed
from vishwamai.layers.mlp import MLP
from vishwamai.layers.rope import apply_rope, rope_inv_freq
from vishwamai.layers.attention import FlashAttention

__all__ = ["Linear", "LayerNorm", "RMSNorm", "make_norm", "Embed", "MLP", "apply_rope",
           "rope_inv_freq", "FlashAttention"]
