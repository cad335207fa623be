"""Ahead-of-time compilation for TPU topologies (`vishwamai.aot`): XLA:TPU on this CPU host.

The compiling tests need libtpu (`pip install "jax[tpu]==<jax version>"`, pinned in
requirements.txt) and are skipped without it; the argument checks, the out-of-memory parser and
the per-chip memory model run everywhere. Tolerances: a recompiled grid row must give the
committed file's FLOPs within 1% and peak bytes within 5% (the same libtpu gives the same
numbers; the slack is for a different libtpu patch release).
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import pytest

from vishwamai import aot, bench
from vishwamai.analysis.params import count_params
from vishwamai.analysis.roofline import memory_per_chip, sharded_param_count
from vishwamai.config import PRESETS
from vishwamai.kernels import attention as A

GRID = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "tpu_compile.json"
needs_libtpu = pytest.mark.skipif(not aot.have_libtpu(), reason="libtpu is not installed")


@pytest.fixture
def tpu_defaults():
    """The PRNG and matmul precision the grid was compiled with (JAX's defaults). The suite's
    conftest picks 'rbg' (another key shape, other FLOPs in the train step) and 'highest'
    precision (f32 matmuls in more bf16 passes on a TPU; Mosaic rejects it for the splash
    kernel's bf16 dots: "Bad lhs type")."""
    prov = json.loads(GRID.read_text())["provenance"]
    old = (jax.config.jax_default_prng_impl, jax.config.jax_default_matmul_precision)
    jax.config.update("jax_default_prng_impl", prov.get("prng_impl", "threefry2x32"))
    jax.config.update("jax_default_matmul_precision", prov.get("matmul_precision"))
    yield
    jax.config.update("jax_default_prng_impl", old[0])
    jax.config.update("jax_default_matmul_precision", old[1])


# ------------------------------------------------------------------------- everywhere

def test_parse_topology():
    t = aot.parse_topology("v5e:2x2")
    assert (t["generation"], t["chips"], t["hardware"]) == ("v5e", 4, "tpu_v5e")
    assert aot.parse_topology("v5p:4x4x4")["chips"] == 64
    assert aot.parse_topology("v6e:16x16")["chips"] == 256
    for bad in ("v5e", "v5e:2x2x1", "v4:2x2", "v7x:2x2x1", "tpu:2x2", "v5e:0x2", 4):
        with pytest.raises(ValueError, match="v5e:2x2"):
            aot.parse_topology(bad)


def test_parse_oom_message():
    msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
           "space hbm. ... the total memory required for HLO temporaries (41.32G) exceeds "
           "available HBM (15.75G).\nmore")
    oom = aot.parse_oom(msg)
    assert oom["needed_bytes"] == pytest.approx(41.32 * 2**30)
    assert oom["available_bytes"] == pytest.approx(15.75 * 2**30)
    assert oom["needed_for"] == "HLO temporaries"
    assert oom["message"].startswith("RESOURCE_EXHAUSTED")
    assert math.isnan(aot.parse_oom("RESOURCE_EXHAUSTED: something else")["needed_bytes"])


def test_missing_libtpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(aot.topology, "have_libtpu", lambda: False)  # looked up there
    with pytest.raises(aot.LibtpuMissingError, match=rf'pip install "jax\[tpu\]=={jax.__version__}"'):
        aot.compile_for_topology("tiny", "v5e:2x2", layout="fsdp", mode="train", batch_size=8,
                                 seq_len=128)
    assert issubclass(aot.LibtpuMissingError, ImportError)


def test_bad_arguments_name_the_argument():
    kw = dict(layout="fsdp", mode="train", batch_size=8, seq_len=128)
    with pytest.raises(ValueError, match="topology="):
        aot.compile_for_topology("tiny", "v5e-8", **kw)
    with pytest.raises(ValueError, match="layout="):
        aot.compile_for_topology("tiny", "v5e:2x2", **{**kw, "layout": "pipeline"})
    with pytest.raises(ValueError, match="mode="):
        aot.compile_for_topology("tiny", "v5e:2x2", **{**kw, "mode": "serve"})
    with pytest.raises(ValueError, match="buffers"):
        aot.compile_for_topology("tiny", "v5e:2x2", **kw, buffers=-2)


def test_buffer_report_cli_checks_out_before_compiling(capsys):
    from vishwamai.benchmarks import tpu_buffers
    with pytest.raises(SystemExit) as e:
        tpu_buffers.main(["--out", "/nonexistent-dir/x.json"])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_memory_per_chip_splits_like_the_layout():
    cfg = PRESETS["llama2_7b"].replace(dtype="bfloat16", param_dtype="bfloat16")
    n = count_params(cfg)["total"]
    assert sharded_param_count(cfg, "data", 8) == n
    fsdp = sharded_param_count(cfg, "fsdp", 8)
    assert n / 8 < fsdp < n / 8 * 1.001                       # norms stay whole
    # 32 heads do not split 64 ways: attention stays whole, the MLP and vocabulary split
    tp64 = sharded_param_count(cfg, "tensor", 64)
    assert tp64 > count_params(cfg)["attention"] > n / 64
    d = memory_per_chip(cfg, "data", 4, batch=8, seq_len=2048, mode="train", remat="full")
    f = memory_per_chip(cfg, "fsdp", 4, batch=8, seq_len=2048, mode="train", remat="full")
    assert d["params"] == pytest.approx(4 * f["params"], rel=1e-3)
    assert d["activations"] == pytest.approx(f["activations"])   # both split the batch
    dec = memory_per_chip(cfg, "tensor", 4, batch=4, seq_len=1, mode="decode", cache_len=4096)
    assert dec["kv_cache"] == 2 * 32 * 4 * 4096 * 32 * 128 * 2 / 4


# ------------------------------------------------------------------------- with libtpu

@needs_libtpu
def test_cli_tiny_fsdp_train_matches_the_grid(tmp_path, capsys, tpu_defaults):
    """The CLI's acceptance case, which is also a row of the committed grid."""
    out = tmp_path / "x.json"
    payload = bench.main(["aot", "--preset", "tiny", "--topology", "v5e:2x2", "--layout", "fsdp",
                          "--mode", "train", "--batch", "8", "--seq", "128", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and row["chips"] == 4
    assert row["peak_bytes_per_chip"] > 0 and row["flops_per_chip"] > 0
    assert row["collectives"] and "all-gather" in row["collectives"]
    assert "analytic_peak_bytes_per_chip" in row and "provenance" in payload
    assert "v5e:2x2" in capsys.readouterr().out
    _agrees_with_grid(row)


@needs_libtpu
def test_tiny_tensor_decode_matches_the_grid(tpu_defaults):
    ref = _grid_row(preset="tiny", mode="decode")
    row = aot.compile_for_topology("tiny", ref["topology"], layout=ref["layout"], mode="decode",
                                   batch_size=ref["batch_size"], seq_len=ref["seq_len"],
                                   cache_len=ref["cache_len"], dtype=ref["dtype"],
                                   param_dtype=ref["param_dtype"], buffers=6)
    assert row["status"] == "ok" and row["splash"]
    _agrees_with_grid(row)
    # XLA's buffer assignment: its allocations, largest first, inside the program's peak
    sizes = [b["bytes"] for b in row["largest_buffers"]]
    assert 0 < len(sizes) <= 6 and sizes == sorted(sizes, reverse=True)
    assert sizes[0] <= row["report_total_bytes"] <= row["peak_bytes_per_chip"]
    assert all("[" in b["shapes"] for b in row["largest_buffers"])


def _grid_row(**match):
    rows = json.loads(GRID.read_text())["rows"]
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert found, f"no grid row with {match}"
    return found[0]


def _agrees_with_grid(row):
    keys = ("preset", "topology", "layout", "mode", "batch_size", "seq_len", "dtype")
    ref = _grid_row(**{k: row[k] for k in keys})
    assert row["flops_per_chip"] == pytest.approx(ref["flops_per_chip"], rel=0.01)
    assert row["peak_bytes_per_chip"] == pytest.approx(ref["peak_bytes_per_chip"], rel=0.05)


@needs_libtpu
def test_cli_out_of_memory_is_a_row_and_exit_0(tmp_path):
    """A two-layer Llama-2-7B with dense attention at 32 x 2048, replicated on 4 v5e chips:
    its f32 scores alone need several times the chip's HBM."""
    out = tmp_path / "oom.json"
    bench.main(["aot", "--preset", "llama2_7b", "--layers", "2", "--topology", "v5e:2x2",
                "--layout", "data", "--mode", "train", "--batch", "32", "--seq", "2048",
                "--attention-impl", "reference", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "oom"
    assert row["needed_bytes"] > 16e9 and row["oom_message"].startswith("RESOURCE_EXHAUSTED")
    assert row["analytic_fits"] is False


def test_cli_bad_topology_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["aot", "--preset", "tiny", "--topology", "v5e-8"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "v5e:2x2" in err and "v5p" in err and "Traceback" not in err


@needs_libtpu
@pytest.mark.parametrize("impl", ["pallas_tpu", "auto"])
def test_splash_kernel_compiles_for_tpu_forward_and_backward(impl, tpu_defaults):
    B, T, N, K, H = 1, 128, 2, 1, 128

    def loss(q, k, v):
        return A.attention(q, k, v, causal=True, implementation=impl).astype(jnp.float32).sum()

    shapes = [((B, T, N, H), jnp.bfloat16), ((B, T, K, H), jnp.bfloat16),
              ((B, T, K, H), jnp.bfloat16)]
    fwd = aot.compile_on_one_chip(loss, *shapes).as_text()
    bwd = aot.compile_on_one_chip(jax.grad(loss, argnums=(0, 1, 2)), *shapes).as_text()
    for text in (fwd, bwd):
        assert 'custom_call_target="tpu_custom_call"' in text
        assert "splash" in text.lower()
    # outside the compile target, this CPU process still refuses the TPU kernel by name
    q = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match="pallas_tpu"):
        A.attention(q, q, q, implementation="pallas_tpu")


@needs_libtpu
@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_gemm_on_tpu_keeps_fp8_operands(tpu_defaults, scaling):
    """The kernel's GEMM reaches the TPU's matmul with e4m3 operands, as a plain e4m3 x e4m3 dot
    does (its scales rescale the f32 result; a dequantise-then-dot form reached it as f32)."""
    r = aot.fp8_gemm_on_tpu("v5e", M=256, K=256, N=256, scaling=scaling)
    assert r["matmuls"] and r["native_fp8"]
    assert all(m["lhs"].startswith("f8e4m3fn") and m["rhs"].startswith("f8e4m3fn")
               for m in r["matmuls"])
    assert r["raw_fp8_native"]


def test_buffer_helpers_find_the_head_accumulator_and_overlaps():
    from vishwamai.benchmarks import tpu_buffers as tb
    c = PRESETS["llama2_7b"]
    acc, head = f"f32[{c.hidden_dim},{c.vocab_size}]", f"bf16[{c.hidden_dim},{c.vocab_size}]"
    row = {"preset": "llama2_7b", "largest_buffers": [
        {"bytes": 100, "offset": 0, "values": 2, "shapes": f"{acc}, 5×bf16[32,1024,2,11008]"},
        {"bytes": 50, "offset": 100, "values": 1, "shapes": head},
        {"bytes": 10, "offset": 40, "values": 1, "shapes": "s32[8]"}]}
    assert tb.head_accumulator(row) == {"shape": acc, "bytes": 100,
                                        "shared_with": "5×bf16[32,1024,2,11008]"}
    assert tb.overlaps(row, acc, head) is False            # [0, 100) and [100, 150)
    assert tb.overlaps(row, acc, "s32[8]") is True          # [40, 50) inside [0, 100)
    assert tb.overlaps(row, acc, "f32[1,2]") is None
    assert tb.shapes_bytes(row["largest_buffers"], "bf16[") == 150


def test_lane_padded_logits_match_the_compiled_forward_pass():
    """gpt2's vocabulary (50,257) is not a multiple of 128: XLA:TPU computes the forward pass's
    logits into a lane-padded buffer, the compiled program's only temporary of that size. The
    planner's `lanes=128` term must equal the grid's temp bytes within 4% on every generation
    (within 0.1% on v4, v5e and v6e; megacore v5p keeps a few MB more)."""
    rows = [r for r in json.loads(GRID.read_text())["rows"]
            if r["preset"] == "gpt2" and r["mode"] == "forward" and r["status"] == "ok"]
    assert len(rows) >= 4
    for r in rows:
        cfg = aot.model_config("gpt2", dtype=r["dtype"], param_dtype=r["param_dtype"])
        kw = dict(batch=r["batch_size"], seq_len=r["seq_len"], mode="forward")
        plain = memory_per_chip(cfg, r["layout"], r["chips"], **kw)
        tiled = memory_per_chip(cfg, r["layout"], r["chips"], lanes=aot.TPU_LANES, **kw)
        padded = tiled["logits"] - plain["logits"]
        assert padded == pytest.approx(r["temp_bytes"], rel=0.04), r["topology"]
        assert plain["logits"] == pytest.approx(r["output_bytes"], rel=0.001)
    llama = aot.model_config("llama2_7b")               # 32,000 = 250 x 128: nothing added
    assert memory_per_chip(llama, "data", 4, batch=8, seq_len=128, mode="forward", lanes=128) \
        == memory_per_chip(llama, "data", 4, batch=8, seq_len=128, mode="forward")


@needs_libtpu
def test_moe_compiles_with_an_expert_axis_and_without(tpu_defaults):
    """tiny_moe's train step for 4 v5e chips: FSDP alone (each chip dispatches its own tokens
    under shard_map) and 2 x 2 fsdp x expert (tokens sent to their experts by all-to-all);
    the expert axis halves the expert weights each chip holds."""
    kw = dict(layout="fsdp", mode="train", batch_size=8, seq_len=64)
    alone = aot.compile_for_topology("tiny_moe", "v5e:2x2", **kw)
    split = aot.compile_for_topology("tiny_moe", "v5e:2x2", expert=2, **kw)
    assert alone["status"] == split["status"] == "ok"
    assert alone["expert_parallel"] == 1 and split["expert_parallel"] == 2
    a2a = split["step_collectives"].get("all-to-all", {"count": 0})["count"]
    assert a2a >= 4 * PRESETS["tiny_moe"].num_moe_layers     # dispatch + combine, fwd + bwd
    assert a2a > alone["step_collectives"].get("all-to-all", {"count": 0})["count"]
    from vishwamai.benchmarks.tpu_grid import with_analytic
    assert with_analytic(split)["analytic_parts"]["moe_dispatch"] > 0
    with pytest.raises(ValueError, match="expert=3 must divide the 4 chips"):
        aot.compile_for_topology("tiny_moe", "v5e:2x2", expert=3, **kw)
    with pytest.raises(ValueError, match="expert=2 needs a mixture of experts"):
        aot.compile_for_topology("tiny", "v5e:2x2", expert=2, **kw)
