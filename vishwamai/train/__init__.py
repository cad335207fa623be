"""Training: chunked cross-entropy, AdamW with warm-up and cosine decay, mixed precision,
rematerialisation, gradient accumulation and a jitted train step that donates its state.

Shape letters as everywhere in the package: B batch, T sequence, D width, V vocabulary.

The loss never builds the `[B, T, V]` f32 logits the seed ran out of memory on: the sequence is
cut into chunks of `chunk_size` positions and each chunk's logits live only inside one step of a
`lax.scan`. With a head *weight* the scan computes the loss and its gradients in the same pass
(a `jax.custom_vjp`: the backward pass only scales the stored gradients), so no chunk is ever
recomputed; with a head *function* each chunk is wrapped in `jax.checkpoint` instead and its
logits are recomputed in the backward pass.

Mixed precision is the config's two dtypes: parameters (and the optimizer's moments and the
gradients) stay in `param_dtype` (f32 "master" weights); matmuls run in `dtype` (e.g. bf16);
norms, softmax and the loss compute in f32.
"""
from vishwamai.train.losses import (  # noqa: F401
    DEFAULT_CHUNK, _checkpointed_ce_sum, _chunk_logits, _fused_ce_sum, _fused_ce_sum_bwd,
    _fused_ce_sum_fwd, _fused_forward, _nll_from_logits, _pad_and_chunk, _unchunk,
    chunked_cross_entropy, cross_entropy_sum)
from vishwamai.train.step import (  # noqa: F401
    TrainState, _split_batch, as_model, clip_by_global_norm, create_train_state, current_lr,
    decay_mask, eval_loss, head_weight, lr_schedule, make_grad_fn, make_loss_fn,
    make_optimizer, make_step_fn, make_train_step)
from vishwamai.train.fit import (  # noqa: F401
    _checked_batches, _checking, _storable, _unstorable, _vocab_size, fit)
