"""MoE fields of ModelConfig: bad input named clearly, the presets' published totals counted on
the real tree (`jax.eval_shape`), active parameters per token, the Hugging Face mapping."""
import pytest

from vishwamai.analysis.params import count_params
from vishwamai.config import PUBLISHED_PARAMS, ModelConfig, get_preset
from vishwamai.model import VishwamAI
from vishwamai.validate import InputError


@pytest.mark.parametrize("change, match", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9 .*must not exceed num_experts=8"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(router_scoring="relu"), "router_scoring.*softmax.*sigmoid"),
    (dict(moe_impl="megablocks"), "moe_impl.*dropless"),
    (dict(num_experts=-1), "num_experts"),
    (dict(first_dense_layers=2), "first_dense_layers=2 must be below num_layers=2"),
    (dict(first_dense_layers=1, scan_layers=True), "first_dense_layers=1 needs scan_layers"),
    (dict(router_n_group=3), "router_n_group=3 must divide num_experts=8"),
    (dict(router_n_group=4, router_topk_group=1, num_experts_per_tok=3), "num_experts_per_tok=3"),
    (dict(router_aux_loss_coef=-0.1), "router_aux_loss_coef"),
    (dict(qk_norm="layer"), "qk_norm"),
])
def test_bad_moe_fields_name_the_argument(change, match):
    with pytest.raises(InputError, match=match):
        get_preset("tiny_moe").replace(**change)


def test_dense_config_ignores_moe_fields():
    cfg = get_preset("tiny").replace(num_experts_per_tok=99)  # unused without experts
    assert cfg.num_moe_layers == 0


@pytest.mark.parametrize("name", ["mixtral_8x7b", "qwen3_30b_a3b", "olmoe_1b_7b"])
def test_moe_presets_count_published_totals(name):
    cfg = get_preset(name)
    assert VishwamAI(cfg).num_params() == PUBLISHED_PARAMS[name] == count_params(cfg)["total"]


# Active parameters per token (router, K routed experts, attention, norms, embedding row and
# head): the model cards' "12.9B" (Mixtral), "3.3B" (Qwen3-30B-A3B), "1.3B" (OLMoE).
ACTIVE = {"mixtral_8x7b": (12.8e9, 13.0e9), "qwen3_30b_a3b": (3.2e9, 3.4e9),
          "olmoe_1b_7b": (1.2e9, 1.4e9)}


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_parameters_match_the_model_cards(name):
    from vishwamai.analysis.moe import moe_params

    p = moe_params(get_preset(name))
    lo, hi = ACTIVE[name]
    assert lo < p["active"] < hi
    assert p["total"] == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", ["mixtral_8x7b", "qwen3_30b_a3b", "olmoe_1b_7b", "tiny_moe"])
def test_hf_config_round_trip_of_moe_presets(name):
    cfg = get_preset(name)
    back = ModelConfig.from_hf(cfg.to_hf())
    assert back.replace(name=cfg.name, router_z_loss_coef=cfg.router_z_loss_coef) == cfg


def test_to_hf_refuses_what_moe_families_cannot_express():
    cfg = get_preset("tiny_moe")
    with pytest.raises(ValueError, match="router_scoring"):
        cfg.replace(router_scoring="sigmoid").to_hf("mixtral")
    with pytest.raises(ValueError, match="num_experts"):
        cfg.to_hf("llama")
    with pytest.raises(ValueError, match="qk_norm"):
        cfg.to_hf("qwen3_moe")
    with pytest.raises(ValueError, match="qkv_bias"):
        cfg.to_hf("qwen2_moe")
    with pytest.raises(ValueError, match="mlp_only_layers"):
        ModelConfig.from_hf(dict(get_preset("qwen3_30b_a3b").to_hf(), mlp_only_layers=[0]))
