"""Published training-throughput results, and their headline recomputed from our FLOP model.

Each entry keeps the source's own words: its setup (chips, sequence, batch, precision) and the
figures it states (MFU, tokens/s per chip, model TFLOP/s per chip), and `compare`, the figure
recomputed and set against the stated one ('tokens_per_s' from the MFU, 'mfu' from the
tokens/s, 'flops_per_token' from TFLOP/s over tokens/s, None: nothing stated to compare). `reproduce` recomputes the
unstated figure from `flops.flops` (training FLOPs = 3 x forward, no remat) under each
attention convention and reports which one the source's numbers imply:
- 'full': the whole T x T score square, 6N + 12 L N H T per token (PaLM's appendix; MaxText's
  `calculate_tflops_training_per_device`; torchtitan's `get_num_flop_per_token`);
- 'causal': half of it, 6N + 6 L N H T (Megatron's and NeMo's model-FLOPs formula).
Here N counts the matmul parameters including the output head, not the embedding lookup.
Every figure was read from the source named in `source` (late 2026); where a setup value is
not on that page, `notes` says where it comes from.
"""
from __future__ import annotations

from vishwamai.analysis.flops import flops
from vishwamai.analysis.hardware import get_chip, peak_flops

CONVENTIONS = ("full", "causal")

PUBLISHED: tuple[dict, ...] = (
    {"key": "maxtext_llama3.1_8b_v6e256", "framework": "MaxText",
     "source": "github.com/AI-Hypercomputer/maxtext docs/reference/models/tiering.md "
               "(Trillium Gold table)",
     "model": "llama3_8b", "hardware": "tpu_v6e", "chips": 256, "seq_len": 8192,
     "global_batch": None, "precision": "bf16", "mfu": 0.4546, "tokens_per_s_per_chip": 7207,
     "tflops_per_chip": None, "stated_convention": "full", "compare": "tokens_per_s",
     "notes": "'256 Chips, BF16, SL=8192'; the table states no batch. Llama 3.1 8B has the "
              "Llama 3 8B shapes (the preset used here)."},
    {"key": "maxtext_llama2_7b_8xh100", "framework": "MaxText",
     "source": "github.com/AI-Hypercomputer/maxtext MaxText/configs/a3/llama_2_7b/README.md "
               "(1x A3 h100-80gb-8: 492 TFLOP/sec/chip) and 1vm.sh (the run)",
     "model": "llama2_7b", "hardware": "h100", "chips": 8, "seq_len": 4096,
     "global_batch": 32, "precision": "bf16", "mfu": None, "tokens_per_s_per_chip": None,
     "tflops_per_chip": 492.0, "stated_convention": "full", "compare": None,
     "notes": "1vm.sh: ici_fsdp_parallelism=8, per_device_batch_size=4, max_target_length=4096. "
              "No tokens/s is published, so the ratio cannot be taken: tokens/s is ours."},
    {"key": "torchtitan_llama3.1_8b_8xh100", "framework": "torchtitan",
     "source": "github.com/pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md "
               "(Table 1, FSDP row)",
     "model": "llama3_8b", "hardware": "h100", "chips": 8, "seq_len": 8192,
     "global_batch": 16, "precision": "bf16", "mfu": 0.33, "tokens_per_s_per_chip": 5762,
     "tflops_per_chip": None, "stated_convention": "full", "compare": "mfu",
     "notes": "Local batch 2, global 16, selective AC. The page states MFU only as '33% to 39%' "
              "for the 8B runs without Float8, '(with or without torch.compile, "
              "respectively)'; the tokens/s pair them the other way (5,762 without compile is "
              "the lower end, this row; 6,667 with it the upper). MFU is against the SXM peak "
              "although its 500 W HBM2e H100s are slower. seq_len 8192 is the llama3_8b.toml "
              "default, not on the page."},
    {"key": "megatron_bridge_llama3_8b_fp8_8xh100", "framework": "Megatron-Bridge (NeMo)",
     "source": "github.com/NVIDIA-NeMo/Megatron-Bridge docs/performance-summary.md "
               "(25.11 container, DGX-H100, LLAMA3_8B)",
     "model": "llama3_8b", "hardware": "h100", "chips": 8, "seq_len": 8192,
     "global_batch": 128, "precision": "fp8", "mfu": None, "tokens_per_s_per_chip": 14451,
     "tflops_per_chip": 744.0, "stated_convention": "causal", "compare": "flops_per_token",
     "notes": "FP8-CS, GBS 128, MBS 1, FSDP 1, TP/PP/CP 1, GA 16. MFU is not stated; against "
              "the fp8 dense peak 744 TFLOP/s would be 38%."},
)


def flops_per_token(model: str, seq_len: int, convention: str) -> float:
    """Training model FLOPs per token (3 x forward, logits included, no remat)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not one of {CONVENTIONS}")
    f = flops(model, batch=1, seq_len=seq_len, mode="train", convention=convention,
              remat="none")
    return f["model"] / seq_len


def reproduce(entry: dict) -> dict:
    """The entry's headline recomputed from our FLOP model, per convention.

    Returns:
      dict: flops_per_token {conv}, ours {conv} (our recomputation of the figure the source
      leaves to its formula: tokens/s from MFU, FLOPs/token from TFLOP/s and tokens/s, or MFU
      from tokens/s), stated (that figure as published, None if it is not), ratio {conv}
      (ours / stated, None without a stated figure), metric (what is compared), agrees_with
      (the convention whose ratio is nearest 1), peak (bf16 dense, per chip).
    """
    chip = get_chip(entry["hardware"])
    peak = peak_flops("bfloat16", chip)[0]
    fpt = {c: flops_per_token(entry["model"], entry["seq_len"], c) for c in CONVENTIONS}
    tok, mfu, tf = entry["tokens_per_s_per_chip"], entry["mfu"], entry["tflops_per_chip"]
    compare = entry.get("compare")
    if compare == "flops_per_token":   # TFLOP/s and tokens/s both stated: their FLOPs/token
        metric, stated, ours = "model FLOPs per token", tf * 1e12 / tok, dict(fpt)
    elif compare == "mfu":             # MFU stated loosely: ours from their tokens/s
        metric, stated = "MFU from tokens/s", mfu
        ours = {c: tok * fpt[c] / peak for c in CONVENTIONS}
    elif compare == "tokens_per_s":    # tokens/s from their MFU
        metric, stated = "tokens/s/chip from MFU", tok
        ours = {c: mfu * peak / fpt[c] for c in CONVENTIONS}
    elif compare is None and tf is not None:
        metric, stated = "tokens/s/chip from TFLOP/s (nothing to compare)", None
        ours = {c: tf * 1e12 / fpt[c] for c in CONVENTIONS}
    else:
        raise ValueError(f"entry {entry.get('key')!r}: compare={compare!r} is not one of "
                         "('tokens_per_s', 'mfu', 'flops_per_token', None) with the figures "
                         "it needs")
    ratio = {c: (ours[c] / stated if stated else None) for c in CONVENTIONS}
    agrees = (min(CONVENTIONS, key=lambda c: abs(ratio[c] - 1)) if stated else None)
    return {"key": entry["key"], "metric": metric, "flops_per_token": fpt, "ours": ours,
            "stated": stated, "ratio": ratio, "agrees_with": agrees, "peak": peak,
            "stated_convention": entry["stated_convention"]}


def reproductions() -> list[dict]:
    """`reproduce` of every `PUBLISHED` entry, the entry's fields included."""
    return [{**e, **reproduce(e)} for e in PUBLISHED]


#: Measured training runs held against the book's two predictions (`benchmarks.published_runs`):
#: each at its published configuration. 'layout' / 'chips': the mesh (MaxText's
#: ici_fsdp_parallelism=-1 is FSDP over every chip); 'remat': the nearest policy of this package
#: to the run's (MaxText's "custom" policy offloads the layer input and the q/k/v/out
#: projections to host memory, so it recomputes the MLP and attention: 'qkv_proj' here);
#: 'tokens_per_s_per_chip' and 'step_s' as the run's log prints them; the published MFU is
#: kept for the table only, never used to predict.
RUNS: tuple[dict, ...] = (
    {"key": "maxtext_llama3.1_8b_v6e256", "framework": "MaxText", "model": "llama3_8b",
     "hardware": "tpu_v6e", "topology": "v6e:16x16", "chips": 256, "layout": "fsdp",
     "global_batch": 1024, "seq_len": 8192, "remat": "qkv_proj", "dtype": "bfloat16",
     "tokens_per_s_per_chip": 7207.336, "step_s": 4.546, "mfu": 0.4546,
     "source": "github.com/AI-Hypercomputer/tpu-recipes training/trillium/Llama3.1-8B-MaxText/"
               "v6e-256/README.md (per_device_batch_size 4, max_target_length 8192, "
               "remat_policy custom, step log 'seconds: 4.546 ... Tokens/s/device: 7207.336');"
               " MFU: maxtext docs/reference/models/tiering.md"},
    {"key": "maxtext_llama3.1_8b_v6e8", "framework": "MaxText", "model": "llama3_8b",
     "hardware": "tpu_v6e", "topology": "v6e:2x4", "chips": 8, "layout": "fsdp",
     "global_batch": 24, "seq_len": 8192, "remat": "qkv_proj", "dtype": "bfloat16",
     "tokens_per_s_per_chip": 7138.890, "step_s": 3.443, "mfu": None,
     "source": "github.com/AI-Hypercomputer/tpu-recipes training/trillium/Llama3.1-8B-MaxText/"
               "v6e-8/README.md (per_device_batch_size 3, max_target_length 8192, remat_policy "
               "custom; step log 'seconds: 3.443 ... Tokens/s/device: 7138.890')"},
    {"key": "torchtitan_llama3.1_8b_8xh100", "framework": "torchtitan", "model": "llama3_8b",
     "hardware": "h100", "topology": None, "chips": 8, "layout": "fsdp", "global_batch": 16,
     "seq_len": 8192, "remat": "qkv_proj", "dtype": "bfloat16",
     "tokens_per_s_per_chip": 5762, "step_s": None, "mfu": 0.33,
     "source": "github.com/pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md "
               "(Table 1, FSDP, selective activation checkpointing): planner only"},
)
