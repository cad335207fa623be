"""Benchmark harness and CLI: sweeps with out-of-memory rows, clear argument errors, JSON with
the environment, MFU against a measured peak, and the seed's benchmark measured."""
import json
import math

import jax
import numpy as np
import pytest

from vishwamai import bench
from vishwamai.benchmarks import harness
from vishwamai.measure import is_oom
from vishwamai.benchmarks import model as mb


def _oom(**params):
    if params["batch_size"] == 64:
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2097152000 bytes.")
    return {"tokens_per_s": 10.0 * params["batch_size"]}


def test_out_of_memory_becomes_a_row():
    rows = harness.run_sweep(_oom, [{"batch_size": b} for b in (1, 64, 8)], progress=False)
    assert [r["status"] for r in rows] == ["ok", "oom", "ok"]
    assert "RESOURCE_EXHAUSTED" in rows[1]["error"] and rows[1]["batch_size"] == 64
    assert rows[2]["tokens_per_s"] == 80.0
    df = harness.results_frame(rows)
    assert list(df["status"]) == ["ok", "oom", "ok"] and math.isnan(df["tokens_per_s"][1])
    assert is_oom(MemoryError())


def test_other_errors_are_not_swallowed():
    def broken(batch_size):
        raise ValueError("a bug, not a lack of memory")
    with pytest.raises(ValueError, match="a bug"):
        harness.run_sweep(broken, [{"batch_size": 1}], progress=False)


@pytest.mark.parametrize("argv, message", [
    (["forward", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--dtype", "f16"], "unknown dtype 'f16'"),
    (["train", "--remat", "sometimes"], "unknown remat policy"),
    (["forward", "--batch", "0"], "int >= 1"),
    (["report"], "--out"),
    (["warp"], "invalid choice"),
])
def test_cli_argument_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_forward_and_train_write_json(tmp_path, capsys):
    out = tmp_path / "fwd.json"
    payload = bench.main(["forward", "--preset", "tiny", "--batch", "1", "4", "--seq", "16",
                          "--repeats", "2", "--no-progress", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["env"]["backend"] == jax.default_backend() and saved["env"]["date"]
    assert [r["batch_size"] for r in saved["rows"]] == [1, 4]
    for r in payload["rows"]:
        assert r["status"] == "ok" and r["compile_s"] > 0 and r["median_s"] > 0
        assert r["p10_s"] <= r["p90_s"]
        np.testing.assert_allclose(r["tokens_per_s"], r["batch_size"] * 16 / r["median_s"])
        np.testing.assert_allclose(r["mfu"], r["model_flops"] / r["median_s"] / r["peak_flops_per_s"])
        assert "higher of" in r["peak_source"]         # CPU: peak read before and after
    assert "tokens_per_s" in capsys.readouterr().out
    train = bench.main(["train", "--preset", "tiny", "--batch", "2", "--seq", "16",
                        "--remat", "none", "full", "--repeats", "2", "--no-progress"])
    rows = train["rows"]
    assert [r["remat"] for r in rows] == ["none", "full"]
    assert all(np.isfinite(r["loss"]) and r["mfu"] > 0 for r in rows)
    assert rows[1]["hardware_flops"] > rows[1]["model_flops"] == rows[0]["model_flops"]


def test_report_runs_the_suite_into_one_file(tmp_path):
    out = tmp_path / "report.json"
    bench.main(["report", "--out", str(out), "--presets", "tiny", "--dtype", "float32",
                "--quick", "--sections", "forward", "train", "--no-progress"])
    saved = json.loads(out.read_text())
    assert set(saved["sections"]) == {"forward/tiny", "train/tiny/none"}
    assert saved["env"]["device_kind"] and saved["peak_flops_per_s"] > 0
    assert saved["skipped"] == []
    bench.main(["report", "--out", str(out), "--presets", "tiny", "--quick", "--budget-s", "0",
                "--sections", "forward", "--no-progress"])
    assert json.loads(out.read_text())["skipped"] == ["forward/tiny"]


def test_seed_benchmark_is_measured_not_asserted():
    cfg = {"preset": "tiny", "dropout_rate": 0.1}
    a = mb.benchmark_tpu_performance(cfg, batch_size=1, seq_len=64, repeats=3)
    b = mb.benchmark_tpu_performance(cfg, batch_size=16, seq_len=64, repeats=3)
    for r in (a, b):
        assert set(r) >= {"forward_latency", "tokens_per_second", "tpu_utilization",
                          "memory_efficiency"}
        assert 0 < r["tpu_utilization"] < 5 and 0 < r["memory_efficiency"] < 1
        np.testing.assert_allclose(r["tokens_per_second"],
                                   r["batch_size"] * 64 / r["forward_latency"])
    assert a["tpu_utilization"] != b["tpu_utilization"]
    assert b["memory_efficiency"] > a["memory_efficiency"]
    rows = mb.analyze_performance(cfg, batch_sizes=(1, 2), seq_len=32, repeats=2,
                                  progress=False)
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows)


# ------------------------------------------------------------------ the plain-Flax yardstick
def test_baseline_is_the_same_model():
    # Same parameter count, and with vishwamai's weights rearranged, the same logits: the
    # speedup versus_baseline reports compares two implementations of one function.
    from vishwamai.benchmarks import baseline
    from vishwamai.config import get_preset
    from vishwamai.model import VishwamAI
    for name in ("tiny", "small", "base", "llama2_7b"):
        cfg = get_preset(name)
        shapes = jax.eval_shape(baseline.Baseline(cfg).init, jax.random.PRNGKey(0),
                                jax.numpy.zeros((1, 8), jax.numpy.int32))
        n = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
        assert n == VishwamAI(cfg).num_params(), name
    tiny = get_preset("tiny")
    # tiny (SwiGLU, GQA, untied) and a tiny seed-style model (GELU, tied embeddings, f32)
    seedlike = get_preset("base").replace(num_layers=2, num_heads=4, head_dim=16, hidden_dim=64,
                                          mlp_dim=256, vocab_size=256, dtype="float32",
                                          dropout_rate=0.0)
    for cfg in (tiny, seedlike):
        model = VishwamAI(cfg)
        params = model.init(jax.random.PRNGKey(3))
        tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 33), 0, cfg.vocab_size)
        bm = baseline.Baseline(cfg)
        bp = baseline.from_vishwamai(params, cfg)
        want = model.logits(params, tokens[:, :-1])
        got = bm.apply({"params": bp}, tokens[:, :-1])
        np.testing.assert_allclose(got, want, atol=2e-5 * float(np.abs(want).max()), rtol=0)
        np.testing.assert_allclose(baseline.loss_fn(bm, bp, tokens), model.loss(params, tokens),
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="norm='layernorm'"):
        baseline.init(get_preset("gpt2"))


def test_cli_baseline_writes_consistent_rows(tmp_path, capsys):
    out = tmp_path / "b.json"
    bench.main(["baseline", "--preset", "tiny", "--batch", "2", "--seq", "16", "--repeats", "2",
                "--no-progress", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["kind"] == "baseline"
    assert [r["kind"] for r in payload["rows"]] == ["forward", "train"]
    for r in payload["rows"]:
        assert r["median_s"] > 0 and r["baseline_median_s"] > 0 and r["compile_s"] > 0
        assert r["speedup"] == pytest.approx(r["baseline_median_s"] / r["median_s"], rel=1e-12)
        assert r["mfu"] / r["baseline_mfu"] == pytest.approx(r["speedup"], rel=1e-9)
        assert r["min_s"] <= r["median_s"] and r["mfu_best"] >= r["mfu"]
    assert np.isfinite(payload["rows"][1]["loss"])
    assert "speedup" in capsys.readouterr().out
    with pytest.raises(ValueError, match="kinds"):
        mb.versus_baseline("tiny", 2, 16, kinds=("backward",))
    with pytest.raises(ValueError, match="batch_size"):
        mb.versus_baseline("tiny", 0, 16)
