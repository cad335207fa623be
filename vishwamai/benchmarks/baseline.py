"""A straightforward Flax implementation of the same decoder, as the benchmarks' yardstick.

The kind of model and train step a practitioner writes in an afternoon from the Flax and optax
documentation: `nn.Dense` projections, `nn.RMSNorm`, RoPE, `jax.nn.dot_product_attention`
(XLA's dense path), the MLP (gated or not), the full `[B, T, V]` logits and
`optax.softmax_cross_entropy_with_integer_labels`, AdamW behind `optax.clip_by_global_norm`.
For the configs it accepts (bias-free RMSNorm decoders: `tiny`, `small`, the seed's and the
Llama presets) it has the same parameters and FLOPs as `VishwamAI`, so timing both in one
process gives a ratio that the machine's noise cancels out of
(`vishwamai.benchmarks.model.versus_baseline`).

No chunked loss, no flash kernel, no fused clipping: what `vishwamai` adds on top is measured
against this.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vishwamai.config import ModelConfig
from vishwamai.transformer import unstack_layers


def _check(cfg: ModelConfig) -> None:
    if not (cfg.norm == "rmsnorm" and cfg.position in ("rope", "none") and not cfg.use_bias):
        raise ValueError(
            "the baseline implements bias-free RMSNorm decoders with RoPE or no positions "
            f"(the 'tiny'/'small', seed and Llama presets); got config {cfg.name!r} with "
            f"norm={cfg.norm!r}, position={cfg.position!r}, use_bias={cfg.use_bias}")


_ACT = {"swiglu": nn.silu, "geglu": nn.gelu, "gelu": nn.gelu, "relu": nn.relu}


def _rope(x, theta):
    T, H = x.shape[1], x.shape[-1]
    freqs = jnp.outer(jnp.arange(T), 1.0 / theta ** (jnp.arange(0, H, 2) / H))
    cos, sin = jnp.cos(freqs)[None, :, None, :], jnp.sin(freqs)[None, :, None, :]
    x1, x2 = x[..., : H // 2], x[..., H // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)
        h = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype, name="attn_norm")(x)
        B, T, _ = h.shape
        q = dense(c.num_heads * c.head_dim, "q")(h).reshape(B, T, c.num_heads, c.head_dim)
        k = dense(c.num_kv_heads * c.head_dim, "k")(h).reshape(B, T, c.num_kv_heads, c.head_dim)
        v = dense(c.num_kv_heads * c.head_dim, "v")(h).reshape(B, T, c.num_kv_heads, c.head_dim)
        if c.position == "rope":
            q, k = _rope(q, c.rope_theta), _rope(k, c.rope_theta)
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        x = x + dense(c.hidden_dim, "o")(a.reshape(B, T, -1))
        h = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype, name="mlp_norm")(x)
        if c.gated_mlp:
            h = _ACT[c.mlp_activation](dense(c.mlp_dim, "gate")(h)) * dense(c.mlp_dim, "up")(h)
        else:
            h = _ACT[c.mlp_activation](dense(c.mlp_dim, "up")(h))
        return x + dense(c.hidden_dim, "down")(h)


class Baseline(nn.Module):
    """tokens `[B, T]` -> logits `[B, T, V]` (f32); matmuls in `cfg.dtype`, f32 parameters."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens):
        c = self.cfg
        embed = nn.Embed(c.vocab_size, c.hidden_dim, dtype=c.dtype, name="embed")
        x = embed(tokens)
        for i in range(c.num_layers):
            x = Block(c, name=f"block_{i}")(x)
        x = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype, name="final_norm")(x)
        if c.tie_embeddings:
            return embed.attend(x).astype(jnp.float32)
        return nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype,
                        name="lm_head")(x).astype(jnp.float32)


def init(cfg: ModelConfig, rng=None):
    """(module, params) for `cfg` (f32)."""
    _check(cfg)
    model = Baseline(cfg)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params = jax.jit(model.init)(rng, jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def from_vishwamai(params, cfg: ModelConfig):
    """A `VishwamAI` parameter tree rearranged into this module's (same numbers, plain 2-D
    kernels), so both models can be checked to compute the same function."""
    _check(cfg)
    if "layers" in params:  # a scanned model's stacked blocks
        params = unstack_layers(params)
    D = cfg.hidden_dim
    out = {"embed": {"embedding": params["token_embed"]["embedding"]},
           "final_norm": {"scale": params["final_norm"]["scale"]}}
    if not cfg.tie_embeddings:
        out["lm_head"] = {"kernel": params["lm_head"]["kernel"]}
    for i in range(cfg.num_layers):
        lp = params[f"layer_{i}"]
        at, mlp = lp["attention"], lp["mlp"]
        wi = mlp["wi"]["kernel"]
        out[f"block_{i}"] = {
            "attn_norm": {"scale": lp["pre_attention_norm"]["scale"]},
            "mlp_norm": {"scale": lp["pre_mlp_norm"]["scale"]},
            "q": {"kernel": at["query"]["kernel"].reshape(D, -1)},
            "k": {"kernel": at["key"]["kernel"].reshape(D, -1)},
            "v": {"kernel": at["value"]["kernel"].reshape(D, -1)},
            "o": {"kernel": at["out"]["kernel"].reshape(-1, D)},
            "down": {"kernel": mlp["wo"]["kernel"]},
        }
        if cfg.gated_mlp:
            out[f"block_{i}"].update(gate={"kernel": wi[:, 0, :]}, up={"kernel": wi[:, 1, :]})
        else:
            out[f"block_{i}"]["up"] = {"kernel": wi}
    return out


def loss_fn(model, params, tokens_BT1):
    logits = model.apply({"params": params}, tokens_BT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BT1[:, 1:]).mean()


def make_train_step(model, learning_rate: float = 3e-4, clip_norm: float = 1.0):
    """(optimizer, jitted `step(params, opt_state, tokens) -> (params, opt_state, loss)`),
    state donated."""
    opt = optax.chain(optax.clip_by_global_norm(clip_norm),
                      optax.adamw(learning_rate, b1=0.9, b2=0.95, weight_decay=0.1))

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, tokens))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt, jax.jit(step, donate_argnums=(0, 1))


def make_forward(model):
    """Jitted `forward(params, tokens) -> logits`."""
    return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens))
