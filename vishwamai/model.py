"""`VishwamAI`: the model behind one object: init, logits, loss, generation, checkpoints."""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vishwamai.config import ModelConfig, get_preset
from vishwamai.transformer import (SCAN_NAME, create_vishwamai_transformer, stack_layers,
                                   unstack_layers)


def _to_config(config) -> ModelConfig:
    if isinstance(config, str):
        return get_preset(config)
    return ModelConfig.from_dict(config)


def cross_entropy(logits_BTV, targets_BT, mask_BT=None):
    """Mean next-token cross-entropy in f32. `mask_BT` (1 = count) weights positions."""
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    if mask_BT is None:
        return jnp.mean(nll_BT)
    mask_BT = mask_BT.astype(jnp.float32)
    return jnp.sum(nll_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def sample_logits(logits_BV, rng, *, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None):
    """Picks one token per row: greedy at temperature 0, else sampled after top-k / top-p.

    Args:
      logits_BV: `[B, V]` next-token logits.
      temperature: 0 for argmax; > 0 divides the logits.
      top_k: keep the k most likely tokens (None: all).
      top_p: keep the smallest set whose probability reaches p (nucleus; None: all).
    Returns:
      `[B]` int32 token ids.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
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
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be an int in [1, {vocab_size}] or None; got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None; got {top_p!r}")


TREE_COMPONENTS = ("embedding", "positions", "attention", "mlp", "norms", "head")


def _component(path) -> str:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[0] == "token_embed":
        return "embedding"
    if keys[0] == "position_embed":
        return "positions"
    if keys[0] == "lm_head":
        return "head"
    if "attention" in keys:
        return "attention"
    if "mlp" in keys:
        return "mlp"
    if any(k.endswith("norm") for k in keys):
        return "norms"
    raise ValueError(f"parameter {'/'.join(keys)} belongs to no known component")


def weight_bytes(num_params: int) -> dict:
    """Bytes to store `num_params` weights in each storage format (scales not included)."""
    return {"float32": 4 * num_params, "bfloat16": 2 * num_params,
            "float8_e4m3fn": num_params, "int8": num_params}


class VishwamAI:
    """One model, its config and its pure functions.

    >>> model = VishwamAI("tiny")
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> logits = model.logits(params, tokens)            # [B, T, V]
    >>> out = model.generate(params, prompt, max_new_tokens=16)
    """

    def __init__(self, config: ModelConfig | Mapping[str, Any] | str = "tiny"):
        self.config = _to_config(config)
        self.module = create_vishwamai_transformer(self.config)

    # ------------------------------------------------------------------ parameters
    def init(self, rng, batch_size: int = 1, seq_len: int | None = None):
        """Initialised parameters (a plain pytree; logical axes via `param_axes()`)."""
        seq_len = min(self.config.max_seq_len, 8) if seq_len is None else seq_len
        tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
        variables = jax.jit(self.module.init)(rng, tokens)
        return nn.unbox(variables["params"])

    def abstract_params(self):
        """Shapes and dtypes of the parameters, without allocating them (`jax.eval_shape`)."""
        tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        variables = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), tokens)
        return nn.unbox(variables["params"])

    def param_axes(self):
        """The logical axis names of every parameter, as `PartitionSpec`s of names."""
        tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        variables = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), tokens)
        return nn.get_partition_spec(variables)["params"]

    def convert_params(self, params):
        """`params` in either layer layout -> this config's (`scan_layers`): stacked `layers`
        or `layer_0` ... `layer_{L-1}`. Exact; a tree already in this layout is returned."""
        scanned = SCAN_NAME in params
        if scanned == self.config.scan_layers:
            return params
        if self.config.scan_layers:
            return stack_layers(params, self.config.num_layers)
        return unstack_layers(params)

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_params()))

    def param_breakdown(self) -> dict:
        """Parameters per component, read off the real tree (`jax.eval_shape`: no memory).

        Components: embedding, positions, attention (q, k, v, o), mlp, norms, head; plus total.
        """
        counts = dict.fromkeys(TREE_COMPONENTS, 0)
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.abstract_params()):
            counts[_component(path)] += leaf.size
        counts["total"] = sum(counts[c] for c in TREE_COMPONENTS)
        return counts

    # ------------------------------------------------------------------ forward and loss
    def logits(self, params, tokens_BT, *, train: bool = False, rng=None):
        """`[B, T, V]` logits in the compute dtype."""
        rngs = {"dropout": rng} if train else None
        return self.module.apply({"params": params}, tokens_BT, train=train, rngs=rngs)

    def hidden(self, params, tokens_BT, *, train: bool = False, rng=None):
        """`[B, T, D]` final-normed hidden states (the input of the output head)."""
        rngs = {"dropout": rng} if train else None
        return self.module.apply({"params": params}, tokens_BT, train=train, rngs=rngs,
                                 return_hidden=True)

    def loss(self, params, tokens_BT, *, train: bool = False, rng=None):
        """Mean next-token cross-entropy: positions 0..T-2 predict tokens 1..T-1."""
        logits = self.logits(params, tokens_BT[:, :-1], train=train, rng=rng)
        return cross_entropy(logits, tokens_BT[:, 1:])

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch_size: int, max_len: int):
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens."""
        self.config.check_seq_len(max_len)
        tokens = jax.ShapeDtypeStruct((batch_size, max_len), jnp.int32)
        shapes = jax.eval_shape(
            functools.partial(self.module.init, decode=True), jax.random.PRNGKey(0), tokens)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

    def decode_step(self, params, cache, tokens_BT):
        """Runs `tokens_BT` through the model against `cache`; returns (logits, new cache)."""
        logits, mutated = self.module.apply({"params": params, "cache": cache}, tokens_BT,
                                            decode=True, mutable=["cache"])
        return logits, mutated["cache"]

    def generate(self, params, prompt_BT, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, rng=None):
        """Autoregressive generation with the KV cache, the whole loop in one jitted program.

        The prompt is prefilled in one call; each new token is one cached decode step.

        Args:
          prompt_BT: `[B, T]` int prompt (all rows the same length).
          max_new_tokens: tokens to append; `T + max_new_tokens <= max_seq_len`.
          temperature, top_k, top_p: see `sample_logits` (temperature 0 = greedy).
          rng: PRNG key, required when temperature > 0.
        Returns:
          `[B, T + max_new_tokens]` int32: the prompt followed by the generated tokens.
        """
        prompt_BT = jnp.asarray(prompt_BT)
        if prompt_BT.ndim != 2 or not jnp.issubdtype(prompt_BT.dtype, jnp.integer):
            raise ValueError(f"prompt must be an int array [B, T]; got {prompt_BT.dtype}{list(prompt_BT.shape)}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        _check_sampling(temperature, top_k, top_p, self.config.vocab_size)
        total = prompt_BT.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(
                f"prompt length {prompt_BT.shape[1]} + max_new_tokens {max_new_tokens} = {total} "
                f"exceeds max_seq_len={self.config.max_seq_len}")
        if temperature > 0 and rng is None:
            raise ValueError("rng is required when temperature > 0")
        rng = jax.random.PRNGKey(0) if rng is None else rng
        return self._generate(params, prompt_BT.astype(jnp.int32), rng, max_new_tokens,
                              float(temperature), top_k, top_p)

    @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
    def _generate(self, params, prompt_BT, rng, max_new_tokens, temperature, top_k, top_p):
        B, T = prompt_BT.shape
        cache = self.init_cache(B, T + max_new_tokens)
        logits, cache = self.decode_step(params, cache, prompt_BT)
        sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                                   top_p=top_p)
        rng, sub = jax.random.split(rng)
        first_B = sample(logits[:, -1], sub)

        def step(carry, _):
            cache, tok_B, rng = carry
            logits, cache = self.decode_step(params, cache, tok_B[:, None])
            rng, sub = jax.random.split(rng)
            nxt_B = sample(logits[:, -1], sub)
            return (cache, nxt_B, rng), nxt_B

        _, rest_NB = jax.lax.scan(step, (cache, first_B, rng), None, length=max_new_tokens - 1)
        new_BN = jnp.concatenate([first_B[:, None], rest_NB.T], axis=1)
        return jnp.concatenate([prompt_BT, new_BN], axis=1)

    # `self` is a static argument of `_generate`: hash and compare by config.
    def __hash__(self):
        return hash(self.config)

    def __eq__(self, other):
        return isinstance(other, VishwamAI) and other.config == self.config

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, params) -> None:
        """Writes `params` to the directory `path` with Orbax (the path must not exist)."""
        import orbax.checkpoint as ocp
        path = os.path.abspath(os.fspath(path))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, params)

    def restore(self, path: str | os.PathLike):
        """Reads parameters saved by `save`, checked against this config's parameter shapes.

        A checkpoint written in the other layer layout (scanned vs unrolled, see
        `ModelConfig.scan_layers`) is read in its own layout and converted (`convert_params`).
        """
        import orbax.checkpoint as ocp
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise ValueError(f"no checkpoint directory at path={path!r}")
        with ocp.StandardCheckpointer() as ckptr:
            saved_scanned = SCAN_NAME in ckptr.metadata(path).item_metadata
            target = self
            if saved_scanned != self.config.scan_layers:
                target = VishwamAI(self.config.replace(scan_layers=saved_scanned))
            return self.convert_params(ckptr.restore(path, target.abstract_params()))

    def __repr__(self):
        return f"VishwamAI({self.config.name!r}, params={self.num_params():,})"
