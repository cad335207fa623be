"""Sharding on 8 simulated CPU devices: the sharded loss, gradients and train step equal the
single-device ones for the data, FSDP and tensor-parallel layouts, and parameters really are
split. The 8-device checks run in a child process (a JAX process fixes its device count at
first use, and the rest of the suite runs on one device)."""
import textwrap

import jax
import pytest

from tests.subprocess_devices import eight_device_result, register

from vishwamai import sharding

# Loss and gradients: sharded reductions change only the summation order (f32).
LOSS_RTOL = 1e-5
GRAD_ATOL = 2e-6
GRAD_RTOL = 1e-4

CHILD = textwrap.dedent(r"""
    import json, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from vishwamai import sharding, train
    from vishwamai.config import ModelConfig
    from vishwamai.model import VishwamAI
    assert jax.device_count() == 8, jax.devices()
    # Every sharded dimension divides by 8 (N = K = 8 heads, F = 128, V = 256, D = 64).
    cfg = ModelConfig(vocab_size=256, num_layers=1, num_heads=8, num_kv_heads=8, head_dim=8,
                      hidden_dim=64, mlp_dim=128, max_seq_len=64, mlp_activation="swiglu",
                      tie_embeddings=False, attention_impl="reference", name="shard_test")
    model = VishwamAI(cfg)
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 33), 0, 256)
    rng = jax.random.PRNGKey(2)
    opt = train.make_optimizer(1e-3, warmup_steps=1, total_steps=10)
    ref_loss, ref_grads = jax.jit(train.make_grad_fn(model))(params, tokens, rng)
    ref_step = train.make_train_step(model, opt, donate=False)
    ref_state = train.create_train_state(model, opt, jax.random.PRNGKey(3))  # as sharded init
    ref_state2, ref_metrics = ref_step(ref_state, tokens)
    ref_state3, _ = ref_step(ref_state2, tokens)
    out = {}
    for layout in sharding.LAYOUTS:
        mesh = sharding.mesh_for_layout(layout, 8)
        grad_fn = sharding.make_sharded_grad_fn(model, mesh, batch_size=8)
        loss, grads = grad_fn(sharding.shard_params(params, model, mesh), tokens, rng)
        gerr = max(float(jnp.max(jnp.abs(a - b) - 1e-4 * jnp.abs(b)))
                   for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        state = sharding.init_sharded_state(model, opt, mesh, jax.random.PRNGKey(3))
        step = sharding.make_sharded_train_step(model, opt, mesh, batch_size=8)
        state2, metrics = step(state, tokens)
        state3, _ = step(state2, tokens)
        perr = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves(state3.params),
                                   jax.tree.leaves(ref_state3.params)))
        shapes = sharding.shard_shapes(state3.params)
        mu = sharding.shard_shapes(state3.opt_state)
        out[layout] = {
            "loss": float(loss), "ref_loss": float(ref_loss), "grad_err": gerr,
            "step_loss": float(metrics["loss"]), "ref_step_loss": float(ref_metrics["loss"]),
            "step_grad_norm": float(metrics["grad_norm"]),
            "ref_grad_norm": float(ref_metrics["grad_norm"]), "param_err_2_steps": perr,
            "grads_sharded_like_params": all(
                g.sharding.shard_shape(g.shape) == p.sharding.shard_shape(p.shape)
                for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(state3.params))),
            "shapes": {k: v for k, v in shapes.items()},
            "mu_wi": [v for k, v in mu.items() if k.endswith("layer_0/mlp/wi/kernel")],
            "batch_spec": str(step.batch_sharding.spec),
        }
    mem = sharding.layout_memory(cfg, n_devices=8, batch_size=8, seq_len=16)
    out["memory"] = {r["layout"]: r for r in mem}
    print(json.dumps(out))
""")


register("sharding", __file__, CHILD)


@pytest.fixture(scope="module")
def eight_devices(request):
    return eight_device_result("sharding", request)


@pytest.mark.parametrize("layout", sharding.LAYOUTS)
def test_sharded_loss_and_gradients_equal_single_device(eight_devices, layout):
    r = eight_devices[layout]
    assert abs(r["loss"] - r["ref_loss"]) <= LOSS_RTOL * abs(r["ref_loss"])
    assert r["grad_err"] <= GRAD_ATOL, r["grad_err"]
    assert r["grads_sharded_like_params"]
    assert abs(r["step_loss"] - r["ref_step_loss"]) <= LOSS_RTOL * abs(r["ref_step_loss"])
    assert abs(r["step_grad_norm"] - r["ref_grad_norm"]) <= GRAD_RTOL * r["ref_grad_norm"]
    # Two AdamW steps from the same state land on the same parameters.
    assert r["param_err_2_steps"] <= 1e-5, r["param_err_2_steps"]


def test_parameters_are_really_split(eight_devices):
    shapes = {k: eight_devices[k]["shapes"] for k in sharding.LAYOUTS}
    wi = "layer_0/mlp/wi/kernel"            # [D=64, 2, F=128], axes (embed, None, mlp)
    q = "layer_0/attention/query/kernel"    # [D=64, N=8, H=8], axes (embed, heads, head_dim)
    head = "lm_head/kernel"                 # [D=64, V=256], axes (embed, vocab)
    assert shapes["data"][wi] == [[64, 2, 128], [64, 2, 128]]          # replicated
    assert shapes["fsdp"][wi] == [[64, 2, 128], [8, 2, 128]]           # embed / 8
    assert shapes["tensor"][wi] == [[64, 2, 128], [64, 2, 16]]         # mlp / 8
    assert shapes["fsdp"][q][1] == [8, 8, 8] and shapes["tensor"][q][1] == [64, 1, 8]
    assert shapes["fsdp"][head][1] == [8, 256] and shapes["tensor"][head][1] == [64, 32]
    # Adam's first moment is laid out like its parameter.
    assert eight_devices["fsdp"]["mu_wi"][0][1] == [8, 2, 128]
    assert eight_devices["tensor"]["mu_wi"][0][1] == [64, 2, 16]
    assert "fsdp" in eight_devices["fsdp"]["batch_spec"]
    assert "data" in eight_devices["data"]["batch_spec"]


def test_compiled_bytes_per_device_follow_the_layout(eight_devices):
    mem = eight_devices["memory"]
    d, f, t = (mem[k]["param_bytes_per_device"] for k in ("data", "fsdp", "tensor"))
    assert f * 7 < d and t * 4 < d                   # split ~8x (norm scales stay replicated)
    assert mem["fsdp"]["opt_state_bytes_per_device"] * 7 < mem["data"]["opt_state_bytes_per_device"]
    for row in mem.values():
        assert row["argument_size_in_bytes"] > 0 and row["temp_size_in_bytes"] >= 0
    assert mem["fsdp"]["argument_size_in_bytes"] < mem["data"]["argument_size_in_bytes"]
    assert mem["data"]["collectives"]["all-reduce"] > 0        # gradient all-reduce
    assert mem["fsdp"]["collectives"]["all-gather"] > 0        # weights gathered before use


def test_rules_leave_indivisible_dimensions_replicated():
    mesh = jax.sharding.AbstractMesh((1, 1, 8), sharding.MESH_AXES)
    spec, dropped = sharding.fit_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh)
    assert tuple(spec) == (None, None, None) and dropped == ["kv_heads"]
    spec, dropped = sharding.fit_spec(("embed", "heads", "head_dim"), (64, 8, 16), mesh)
    assert tuple(spec) == (None, "tensor", None) and not dropped


def test_one_device_mesh_and_errors():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs"):
        sharding.make_mesh(data=jax.device_count() + 1)
    with pytest.raises(ValueError, match="layout"):
        sharding.layout_shape("pipeline", 8)
    assert sharding.initialize_distributed() is False   # single process: nothing to do


# Analytic collective bytes (vishwamai.analysis.comms) against the compiled program's, per
# kind and layout. The compiled step keeps FSDP's gathered weights for the backward pass and
# XLA:CPU reduces FSDP gradients with an all-reduce; q, k and v are separate projections.
COMM_RTOL = 0.05
COMPILED_AS = {"data": {}, "fsdp": {"grad_reduction": "all-reduce", "regather_backward": False},
               "tensor": {"fused_qkv": False}}


@pytest.mark.parametrize("layout", sharding.LAYOUTS)
def test_analytic_collective_bytes_match_the_compiled_program(eight_devices, layout):
    from vishwamai.analysis import comms
    from vishwamai.config import ModelConfig
    cfg = ModelConfig(vocab_size=256, num_layers=1, num_heads=8, num_kv_heads=8, head_dim=8,
                      hidden_dim=64, mlp_dim=128, max_seq_len=64, mlp_activation="swiglu",
                      tie_embeddings=False, attention_impl="reference", name="shard_test")
    row = eight_devices["memory"][layout]
    model = comms.collective_bytes(cfg, layout, n=8, batch=row["batch_size"],
                                   seq_len=row["seq_len"], **COMPILED_AS[layout])
    compiled = row["collective_bytes"]
    for kind in comms.KINDS:
        want = model["collectives"][kind]["bytes"]
        if want == 0:
            assert compiled[kind] == 0, (kind, compiled[kind])
        else:
            assert abs(compiled[kind] - want) <= COMM_RTOL * want, (kind, compiled[kind], want)
    assert abs(sum(compiled.values()) - model["bytes"]) <= COMM_RTOL * model["bytes"]
