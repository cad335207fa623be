"""`VishwamAI`: the model behind one object: init, logits, loss, generation (with a KV cache),
parameter counts and breakdowns, and checkpoints (Orbax, and Hugging Face `from_pretrained` /
`save_pretrained`).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vishwamai import checkpoint, hf, validate
from vishwamai.config import PARAM_COMPONENTS, ModelConfig, as_config
from vishwamai.layers.moe import MOE_COLLECTION, moe_losses, moe_penalty
from vishwamai.transformer import (SCAN_NAME, create_vishwamai_transformer, stack_layers,
                                   unstack_layers)


from vishwamai.model.sampling import (_cache_fill, _check_mask, _check_sampling, _check_token_id,
                                      _mask_positions, cache_buckets, cross_entropy, sample_logits,
                                      scan_buckets)
from vishwamai.model.weights import _check_params_tree, _component


@functools.lru_cache(maxsize=64)
def _jitted_init(module):
    """One jitted `module.init` per module: modules of equal configs are equal (and hash alike),
    so every `VishwamAI` of a config shares one compiled initialiser per input shape."""
    return jax.jit(module.init)


class VishwamAI:
    """One model, its config and its pure functions.

    >>> model = VishwamAI("tiny")
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> logits = model.logits(params, tokens)            # [B, T, V]
    >>> out = model.generate(params, prompt, max_new_tokens=16)
    """

    def __init__(self, config: ModelConfig | Mapping[str, Any] | str = "tiny"):
        self.config = as_config(config)
        self.module = create_vishwamai_transformer(self.config)

    # ------------------------------------------------------------------ parameters
    def init(self, rng, batch_size: int = 1, seq_len: int | None = None):
        """Initialised parameters (a plain pytree; logical axes via `param_axes()`)."""
        seq_len = min(self.config.max_seq_len, 8) if seq_len is None else seq_len
        tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
        variables = _jitted_init(self.module)(rng, tokens)
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

    def param_breakdown(self, *, split_attention: bool = False) -> dict:
        """Parameters per component, read off the real tree (`jax.eval_shape`: no memory).

        Components: embedding, positions, attention (q, k, v and o summed, or apart as
        attention_q/k/v/o with `split_attention`), mlp, norms, head; plus total. The same
        components, `config.PARAM_COMPONENTS`, as `analysis.count_params`.
        """
        counts = dict.fromkeys(PARAM_COMPONENTS, 0)
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.abstract_params()):
            counts[_component(path)] += leaf.size
        counts["total"] = sum(counts.values())
        if split_attention:
            return counts
        merged: dict = {}
        for name, n in counts.items():
            key = "attention" if name.startswith("attention_") else name
            merged[key] = merged.get(key, 0) + n
        return merged

    # ------------------------------------------------------------------ Hugging Face
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: str | None = None,
                        param_dtype: str | None = None, shardings=None,
                        max_seq_len: int | None = None, **overrides):
        """Loads a Hugging Face checkpoint directory (GPT-2, Llama, Mistral, Qwen2 families).

        Reads `config.json` (`ModelConfig.from_hf`) and the weights (`model.safetensors`, or the
        shards a `model.safetensors.index.json` lists), streamed tensor by tensor. No network.

        Args:
          path: the local directory.
          dtype: compute dtype (default: the checkpoint's `torch_dtype`, float32 if unknown).
          param_dtype: storage dtype the weights are cast to (same default).
          shardings: None; one `jax.sharding.Sharding`; a tree of them shaped like the
            parameters; or a callable taking the `VishwamAI` model and returning such a tree,
            e.g. `lambda m: vishwamai.sharding.param_shardings(m, mesh)`.
          max_seq_len: use the model up to this length (see `ModelConfig.from_hf`).
          **overrides: further `ModelConfig` fields (e.g. `attention_impl`).
        Returns:
          `(model, params)`.
        """
        path = os.fspath(path)
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise ValueError(f"no config.json in path={path!r} (a local checkpoint directory)")
        with open(config_file) as f:
            raw = json.load(f)
        changes = dict(overrides)
        if dtype is not None:
            changes["dtype"] = dtype
        if param_dtype is not None:
            changes["param_dtype"] = param_dtype
        cfg = ModelConfig.from_hf(raw, max_seq_len=max_seq_len, **changes)
        if raw.get("scan_layers") or getattr(cfg, "scan_layers", False):
            raise ValueError("scan_layers=True (layers stacked on one axis) is not supported by "
                             "from_pretrained; load with scan_layers=False")
        model = cls(cfg)
        if callable(shardings) and not isinstance(shardings, jax.sharding.Sharding):
            shardings = shardings(model)
        params = hf.load_state_dict(cfg, hf.safetensors_files(path),
                                    model_type=raw.get("model_type"), shardings=shardings)
        want = jax.tree_util.tree_structure(model.abstract_params())
        if jax.tree_util.tree_structure(params) != want:
            raise ValueError(f"the checkpoint's parameter tree does not match the model's: "
                             f"{jax.tree_util.tree_structure(params)} != {want}")
        return model, params

    def save_pretrained(self, directory: str | os.PathLike, params, *,
                        model_type: str | None = None, max_shard_bytes: int | None = None):
        """Writes a Hugging Face checkpoint (`config.json` + safetensors) that transformers'
        `from_pretrained` loads; see `vishwamai.hf.save_pretrained`. Returns the files."""
        return hf.save_pretrained(directory, self.config, params, model_type=model_type,
                                  max_shard_bytes=max_shard_bytes)

    def to_hf_state_dict(self, params, *, model_type: str | None = None) -> dict:
        """The parameters as a Hugging Face state dict of numpy arrays (names as transformers')."""
        return hf.to_hf_state_dict(self.config, params, model_type=model_type)

    # ------------------------------------------------------------------ forward and loss
    def logits(self, params, tokens_BT, *, train: bool = False, rng=None, attention_mask=None):
        """`[B, T, V]` logits in the compute dtype.

        `attention_mask` (optional `[B, T]`, 1 = token, 0 = padding): padding keys are masked and
        positions count tokens only, so a left-padded row computes what it computes alone (the
        padding rows' own logits are meaningless). Its values are checked unless it is traced.
        """
        if attention_mask is None:
            return self._apply(params, tokens_BT, train, rng, False)
        if isinstance(attention_mask, jax.core.Tracer):  # under jit: only the shape is known
            if attention_mask.shape != jnp.shape(tokens_BT):
                raise ValueError(f"attention_mask must have the tokens' shape [B, T]="
                                 f"{list(jnp.shape(tokens_BT))}; got {list(attention_mask.shape)}")
            mask_BT = attention_mask.astype(bool)
        else:
            mask_BT = jnp.asarray(_check_mask(attention_mask, jnp.shape(tokens_BT),
                                              left_padded=False))
        return self._apply(params, tokens_BT, train, rng, False,
                           positions_BT=_mask_positions(mask_BT), kv_valid_BS=mask_BT)

    def hidden(self, params, tokens_BT, *, train: bool = False, rng=None,
               return_moe: bool = False):
        """`[B, T, D]` final-normed hidden states; `return_moe`: `(hidden, moe_losses(...))`."""
        return self._apply(params, tokens_BT, train, rng, return_moe, return_hidden=True)

    def _apply(self, params, tokens_BT, train, rng, return_moe, **kw):
        mutable = {"mutable": [MOE_COLLECTION]} if return_moe else {}
        out = self.module.apply({"params": params}, tokens_BT, train=train,
                                rngs={"dropout": rng} if train else None, **mutable, **kw)
        return (out[0], moe_losses(out[1])) if return_moe else out

    def loss(self, params, tokens_BT, *, train: bool = False, rng=None, labels_BT=None,
             ignore_index: int | None = None, return_moe: bool = False):
        """Mean next-token cross-entropy: positions 0..T-2 predict tokens 1..T-1.

        `labels_BT` (optional, `[B, T]` like the tokens, Hugging Face's convention) gives the
        targets instead of the tokens themselves (position t+1's label is scored at t);
        `ignore_index` (e.g. -100) marks labels left out of the loss and of its count.
        MoE configs add the router losses (`layers.moe.moe_penalty`); `return_moe`: `(loss, parts)`.
        """
        tokens_BT = jnp.asarray(tokens_BT)
        if tokens_BT.ndim != 2 or tokens_BT.shape[1] < 2:
            validate.fail("tokens_BT", f"<array of shape {list(tokens_BT.shape)}>",
                          "[B, T] tokens with T >= 2 (position t predicts token t+1)")
        labels_BT = tokens_BT if labels_BT is None else jnp.asarray(labels_BT)
        if labels_BT.shape != tokens_BT.shape:
            raise validate.InputError(f"labels_BT must have the tokens' shape [B, T]="
                                      f"{list(tokens_BT.shape)}; got {list(labels_BT.shape)}")
        if ignore_index is not None:
            validate.integer("ignore_index", ignore_index)
        validate.token_ids("labels_BT[:, 1:]" if labels_BT is not tokens_BT else "tokens",
                           labels_BT[:, 1:], self.config.vocab_size, ignore_index=ignore_index)
        if not self.config.num_experts and not return_moe:
            logits = self.logits(params, tokens_BT[:, :-1], train=train, rng=rng)
            return cross_entropy(logits, labels_BT[:, 1:], ignore_index=ignore_index)
        logits, stats = self._apply(params, tokens_BT[:, :-1], train, rng, True)
        ce = cross_entropy(logits, labels_BT[:, 1:], ignore_index=ignore_index)
        penalty = moe_penalty(self.config, stats)
        out = {"cross_entropy": ce, "penalty": penalty, **stats}
        return (ce + penalty, out) if return_moe else ce + penalty

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch_size: int, max_len: int):
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens."""
        self.config.check_seq_len(max_len)
        tokens = jax.ShapeDtypeStruct((batch_size, max_len), jnp.int32)
        shapes = jax.eval_shape(
            functools.partial(self.module.init, decode=True), jax.random.PRNGKey(0), tokens)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

    def decode_step(self, params, cache, tokens_BT, *, positions_BT=None, kv_valid_BS=None):
        """Runs `tokens_BT` through the model against `cache`; returns (logits, new cache).

        `positions_BT` and `kv_valid_BS` (`[B, S]` over the whole cache) serve padded batches;
        see `TransformerModel.__call__`. The cache holds S positions (`init_cache`'s
        `max_len`): a call that would write past them raises `InputError` when the cache's
        position is concrete, and returns NaN logits under jit (where it is not).
        """
        T = jnp.shape(tokens_BT)[1] if jnp.ndim(tokens_BT) == 2 else None
        used, capacity = _cache_fill(cache)
        if T is not None and used is not None and not isinstance(used, jax.core.Tracer):
            if int(used) + T > capacity:
                raise validate.InputError(
                    f"decode_step: the KV cache holds {capacity} positions (its capacity, "
                    f"init_cache's max_len) and {int(used)} are filled; tokens_BT adds T={T}, "
                    f"{int(used) + T} > {capacity}. Make a larger cache with "
                    f"init_cache(batch_size, max_len>={int(used) + T}).")
        logits, mutated = self.module.apply({"params": params, "cache": cache}, tokens_BT,
                                            decode=True, mutable=["cache"],
                                            positions_BT=positions_BT, kv_valid_BS=kv_valid_BS)
        if T is not None and used is not None:   # under jit: an overflow shows as NaN
            logits = jnp.where(used + T <= capacity, logits, jnp.nan)
        return logits, mutated["cache"]

    def generate(self, params, prompt_BT, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, rng=None,
                 attention_mask=None, prompt_lengths=None,
                 eos_id: int | Sequence[int] | None = None, pad_id: int = 0):
        """Autoregressive generation with the KV cache, the whole loop in one jitted program.

        The prompt is prefilled in one call; each new token is one cached decode step. Prompts
        of different lengths come left-padded, described by `attention_mask` or
        `prompt_lengths`: each row's positions start at 0 at its first token and its padding
        keys are masked, so every row generates what it would generate alone.

        Args:
          prompt_BT: `[B, T]` int prompt.
          max_new_tokens: tokens to append; `T + max_new_tokens <= max_seq_len`.
          temperature, top_k, top_p: see `sample_logits` (temperature 0 = greedy). A `top_k`
            above the vocabulary is clamped to it (keeps every token), as transformers does.
          rng: PRNG key (`jax.random.key` or `jax.random.PRNGKey`), required when
            temperature > 0.
          attention_mask: optional `[B, T]` of 0 (padding) / 1 (token), left-padded.
          prompt_lengths: optional `[B]` ints in [1, T]: row b's prompt is its last
            prompt_lengths[b] tokens (the alternative to `attention_mask`).
          eos_id: optional end-of-sequence id (or a list of them): a row that emits one emits
            `pad_id` afterwards.
          pad_id: the id written after EOS.
        Returns:
          `[B, T + max_new_tokens]` int32: the prompt followed by the generated tokens.
        """
        prompt_BT = jnp.asarray(prompt_BT)
        if prompt_BT.ndim != 2 or not jnp.issubdtype(prompt_BT.dtype, jnp.integer):
            raise ValueError(f"prompt must be an int array [B, T]; got {prompt_BT.dtype}{list(prompt_BT.shape)}")
        validate.positive_int("max_new_tokens", max_new_tokens)
        _check_sampling(temperature, top_k, top_p, self.config.vocab_size)
        total = prompt_BT.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise validate.InputError(
                f"prompt length {prompt_BT.shape[1]} + max_new_tokens {max_new_tokens} = {total} "
                f"exceeds max_seq_len={self.config.max_seq_len} (the KV cache and the positions "
                f"hold at most that many tokens)")
        validate.token_ids("prompt", prompt_BT, self.config.vocab_size)
        if temperature > 0 and rng is None:
            raise ValueError("rng is required when temperature > 0")
        rng = jax.random.PRNGKey(0) if rng is None else validate.prng_key("rng", rng)
        top_k = None if top_k is None else min(int(top_k), self.config.vocab_size)
        B, T = prompt_BT.shape
        if attention_mask is not None and prompt_lengths is not None:
            raise ValueError("give attention_mask or prompt_lengths, not both")
        if prompt_lengths is not None:
            lengths = np.asarray(prompt_lengths)
            if (lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer)
                    or (lengths < 1).any() or (lengths > T).any()):
                raise ValueError(f"prompt_lengths must be {B} ints in [1, T={T}]; got "
                                 f"{lengths.tolist()}")
            attention_mask = np.arange(T)[None, :] >= (T - lengths)[:, None]
        mask_BT = None
        if attention_mask is not None:
            mask = _check_mask(attention_mask, (B, T), left_padded=True)
            mask_BT = None if mask.all() else jnp.asarray(mask)
        V = self.config.vocab_size
        eos_ids = None if eos_id is None else _check_token_id("eos_id", eos_id, V, allow_many=True)
        pad_id = _check_token_id("pad_id", pad_id, V)[0]
        return self._generate(params, prompt_BT.astype(jnp.int32), rng, mask_BT, max_new_tokens,
                              float(temperature), top_k, top_p, eos_ids, pad_id)

    @functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10))
    def _generate(self, params, prompt_BT, rng, mask_BT, max_new_tokens, temperature, top_k,
                  top_p, eos_ids, pad_id):
        B, T = prompt_BT.shape
        buckets = cache_buckets(T, T + max_new_tokens)   # each step reads < 2x its filled cache
        cache = self.init_cache(B, buckets[0])
        if mask_BT is None:  # every row a full-length prompt: plain positions, no key mask
            valid_BS = pos_B = None
            logits, cache = self.decode_step(params, cache, prompt_BT)
        else:
            valid_BS = jnp.concatenate([mask_BT, jnp.ones((B, max_new_tokens), bool)], axis=1)
            logits, cache = self.decode_step(params, cache, prompt_BT,
                                             positions_BT=_mask_positions(mask_BT),
                                             kv_valid_BS=valid_BS[:, :buckets[0]])
            pos_B = jnp.sum(mask_BT, axis=1, dtype=jnp.int32)  # position of the first new token
        sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)

        def finish(tok_B, done_B):
            """Pad after EOS; returns (token, done)."""
            if eos_ids is None:
                return tok_B, done_B
            tok_B = jnp.where(done_B, pad_id, tok_B)
            return tok_B, done_B | jnp.isin(tok_B, jnp.asarray(eos_ids, jnp.int32))

        rng, sub = jax.random.split(rng)
        first_B, done_B = finish(sample(logits[:, -1], sub), jnp.zeros((B,), bool))

        def step(carry, _, valid_BS):
            cache, tok_B, pos_B, done_B, rng = carry
            logits, cache = self.decode_step(
                params, cache, tok_B[:, None],
                positions_BT=None if pos_B is None else pos_B[:, None], kv_valid_BS=valid_BS)
            rng, sub = jax.random.split(rng)
            nxt_B, done_B = finish(sample(logits[:, -1], sub), done_B)
            pos_B = None if pos_B is None else pos_B + 1
            return (cache, nxt_B, pos_B, done_B, rng), nxt_B

        outs = scan_buckets(step, (cache, first_B, pos_B, done_B, rng), buckets, T,
                            max_new_tokens - 1, valid_BS)
        return jnp.concatenate([prompt_BT, first_B[:, None], *outs], axis=1)

    # `self` is a static argument of `_generate`: hash and compare by config.
    def __hash__(self):
        return hash(self.config)

    def __eq__(self, other):
        return isinstance(other, VishwamAI) and other.config == self.config

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, params, *, overwrite: bool = False) -> None:
        """Writes `params` to the new directory `path` with Orbax, atomically, with this
        config and a sha256 of every parameter (`vishwamai.checkpoint.save`).

        Raises `vishwamai.checkpoint.CheckpointError` (a `ValueError`) naming `path` if it
        exists (unless `overwrite`) or cannot be written; the process stays able to exit.
        `params` that are not this model's tree (other paths or shapes) raise `InputError`.
        """
        _check_params_tree("params", params, self.abstract_params(), self.config.name)
        checkpoint.save(path, params, kind="params", config=self.config.to_dict(),
                        overwrite=overwrite)

    def restore(self, path: str | os.PathLike):
        """Reads parameters saved by `save`, checked against this config's parameter shapes.

        A checkpoint written in the other layer layout (scanned vs unrolled, see
        `ModelConfig.scan_layers`) is read in its own layout and converted (`convert_params`).
        A missing, foreign, truncated or corrupt checkpoint, or one of another model, raises
        `vishwamai.checkpoint.CheckpointError` (a `ValueError`) naming the path and, for a
        mismatch, the first parameter that differs and the config fields that differ.
        """
        path = os.path.abspath(os.fspath(path))
        record = checkpoint.read_record(path)
        saved_scanned = any(row[0].split("/")[0] == SCAN_NAME for row in record["leaves"])
        target = self
        if saved_scanned != self.config.scan_layers:
            target = VishwamAI(self.config.replace(scan_layers=saved_scanned))
        params = checkpoint.restore(path, target.abstract_params(), record=record,
                                    config=self.config.to_dict())
        return self.convert_params(params)

    def __repr__(self):
        return f"VishwamAI({self.config.name!r}, params={self.num_params():,})"
