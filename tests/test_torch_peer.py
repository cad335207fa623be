"""The PyTorch peer benchmark (`vishwamai.benchmarks.torch_peer`): its config mapping builds the
same model in transformers (same parameter count, same logits from the same weights), its ratio
summary, its refusal of configs Llama cannot express, and one eager smoke run."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vishwamai import validate  # noqa: E402
from vishwamai.benchmarks import torch_peer  # noqa: E402
from vishwamai.config import get_preset  # noqa: E402
from vishwamai.model import VishwamAI  # noqa: E402


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_torch_model_has_the_same_parameter_count(preset):
    cfg = get_preset(preset)
    model = torch_peer.build_torch_model(cfg)
    n_torch = sum(p.numel() for p in model.parameters())
    assert n_torch == VishwamAI(cfg).num_params()
    if preset == "small":                 # the figure the benchmark's issue quotes
        assert n_torch == 58_466_816
    hc = model.config
    assert (hc.hidden_size, hc.num_hidden_layers, hc.num_attention_heads, hc.num_key_value_heads,
            hc.vocab_size, hc.tie_word_embeddings) == (
        cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size,
        cfg.tie_embeddings)


def test_copied_weights_give_the_same_logits():
    """Tolerance: 1e-4 absolute on f32 logits of order 1 (summation order differs)."""
    cfg = get_preset("tiny")
    model = VishwamAI(cfg)
    params = model.init(jax.random.PRNGKey(0))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, cfg.vocab_size))
    ours = np.asarray(model.logits(params, tokens))
    tm = torch_peer.build_torch_model(cfg, jax.tree.map(np.asarray, params))
    with torch.no_grad():
        theirs = tm(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_ratio_summary():
    r = torch_peer.ratio_summary([1.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    assert r["ratios"] == [2.0, 1.0, 0.5]
    assert (r["median"], r["min"], r["max"]) == (1.0, 0.5, 2.0)
    with pytest.raises(ValueError, match="equally long"):
        torch_peer.ratio_summary([1.0], [1.0, 2.0])


@pytest.mark.parametrize("preset", ["base", "gpt2"])
def test_non_llama_configs_are_refused(preset):
    with pytest.raises(validate.InputError, match="cfg=.*Llama-shaped"):
        torch_peer.hf_llama_config(get_preset(preset))


def test_threads_match_xla():
    assert torch_peer.cpu_threads() >= 1


def test_eager_smoke_run(tmp_path):
    out = tmp_path / "peer.json"
    res = torch_peer.run("tiny", 1, 16, pairs=2, compile=False, progress=False, out=str(out))
    written = json.loads(out.read_text())
    assert written["pairs"] == 2 and len(written["ratios"]["torch_eager"]["train"]["ratios"]) == 2
    assert set(res["sides"]) == {"vishwamai", "torch_eager"}
    assert set(res["ratios"]) == {"torch_eager"}
    assert set(res["ratios"]["torch_eager"]) == {"train", "forward"}
    assert res["threads"]["torch_intra_op"] == res["threads"]["xla_cpu_intra_op"]
    l_ours, l_torch = res["sides"]["vishwamai"]["losses"][0], res["sides"]["torch_eager"]["losses"][0]
    assert np.isfinite(l_ours) and np.isfinite(l_torch)
    assert res["params"] == VishwamAI(get_preset("tiny")).num_params()
