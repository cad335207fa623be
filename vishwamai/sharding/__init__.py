"""Sharding on a device mesh: named mesh axes, logical-axis rules, sharded init and train step.

Every parameter carries logical axis names (vocab, embed, heads, kv_heads, head_dim, mlp, norm,
position) and the residual stream is constrained to (activation_batch, activation_length,
activation_embed). One rule table maps those names onto a three-axis mesh
`('data', 'fsdp', 'tensor')`; a *layout* is the shape of that mesh:

- ``data``: all devices on 'data'. Parameters replicated, the batch split: plain data parallel;
  gradients are all-reduced.
- ``fsdp``: all devices on 'fsdp'. The batch is split as in data parallel, and every
  parameter (and its optimizer moments) is split along its 'embed' axis (ZeRO-3 / FSDP): each
  layer's weights are all-gathered before use and gradients reduce-scattered.
- ``tensor``: all devices on 'tensor'. Heads, MLP columns and the vocabulary are split
  (Megatron-style tensor parallelism); the batch is replicated and activations are
  all-reduced after the attention output and MLP down projections.

Any mix works too (`make_mesh(data=2, tensor=4)`). A dimension that does not divide by its mesh
axes stays replicated (`param_specs` reports which). On one device every rule is a no-op.
"""
from vishwamai.sharding.mesh import (  # noqa: F401
    LAYOUTS, LOGICAL_AXIS_RULES, MESH_AXES, _Context, _axis_size, _dict_key_names, _is_spec,
    batch_sharding, fit_spec, global_batch, init_sharded_state, initialize_distributed,
    layout_shape, make_mesh, mesh_context, mesh_for_layout, param_shardings, param_specs,
    process_rows, shard_params, state_shardings)
from vishwamai.sharding.step import (  # noqa: F401
    _main, compiled_train_memory, layout_memory, layout_memory_subprocess,
    make_sharded_grad_fn, make_sharded_train_step, shard_shapes)
