"""The TPU compile grid's points and the reasons behind its disagreements: chapter 4's sizes
(sequence length, dtype, the slices of 4 to 256 chips per generation), the presets compiled,
`grid_points` (every preset, slice, layout and mode of the grid), and `reason`, the mechanism
read off the compiled rows where the planner and the compiler part ways (`REASONS`, megacore).
"""
from __future__ import annotations

import math

from vishwamai import aot
from vishwamai.config import PRESETS


#: Chapter 4's sizes: a training step holds one sequence of 2048 tokens per chip (the
#: "what fits where" table; the preset's max_seq_len if shorter), bf16 weights and compute,
#: AdamW, full remat, flash-type attention (the splash kernel on TPU), the chunked loss.
TRAIN_SEQ = 2048
SERVE_SEQ = 2048
DTYPE = "bfloat16"
FOUR = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
SIXTEEN = {"v4": "v4:2x2x4", "v5e": "v5e:4x4", "v5p": "v5p:2x2x4", "v6e": "v6e:4x4"}
SIXTY_FOUR = {"v4": "v4:4x4x4", "v5e": "v5e:8x8", "v5p": "v5p:4x4x4", "v6e": "v6e:8x8"}
TWO_FIFTY_SIX = {"v4": "v4:4x8x8", "v5e": "v5e:16x16", "v5p": "v5p:4x8x8", "v6e": "v6e:16x16"}
CHECK_PRESETS = ("tiny",)   # compiled for the test suite; outside the grid's statistics
GRID_PRESETS = ("base", "large", "xl", "xxl", "gpt2", "llama2_7b", "llama3_8b", "tinyllama_1_1b")

#: What the compiled programs show where the planner and the compiler part ways, by
#: (preset or '*', mode, layout or '*'): the mechanism, read off the compiled rows' argument and
#: temporary bytes (see `reason`). Chapter 4 lists each disagreement with its entry.
REASONS: dict = {
    ("tiny", "*", "*"): "a toy model (< 1 MB of weights): the compiler's fixed per-program "
                        "buffers (collective scratch, the splash kernel's tiles padded to "
                        "128 lanes, the loss's [B, 128, V] chunk) outweigh every term the "
                        "planner scales",
    ("*", "train", "data"): "data parallelism all-reduces every gradient: the compiler's "
                            "combined all-reduce buffers come on top of the gradients the "
                            "planner counts (the compiler's total exceeds the planner's on every "
                            "data-parallel training point of the grid)",
    ("*", "train", "tensor"): "tensor parallelism keeps the batch and the residual stream whole "
                              "on every chip; the temporaries the compiler adds beyond the "
                              "planner's (the activations' all-reduce buffers among them) are "
                              "not broken down here. Its peak also exceeds the HBM the compiler "
                              "allows, yet it compiled: the compiler's own fit test shares "
                              "buffers that memory_analysis() counts apart",
    ("*", "forward", "*"): "the planner counts one block's forward working set beside the "
                           "[B, T, V] logits; XLA:TPU fuses the block's elementwise work into "
                           "its matmuls and keeps far less scratch (temp bytes in the file)",
}
MEGACORE = ("v4", "v5p")
MEGACORE_REASON = ("v4 and v5p are megacore chips (two TensorCores driven as one device): "
                   "for the same step their compiler keeps more temporaries than the "
                   "single-core v5e/v6e compilers do")


def _reason_key(row):
    for key in ((row["preset"], row["mode"], row["layout"]), (row["preset"], row["mode"], "*"),
                (row["preset"], "*", "*"), ("*", row["mode"], row["layout"]),
                ("*", row["mode"], "*")):
        if key in REASONS:
            return REASONS[key]
    return None


def _siblings(row: dict, rows) -> list[dict]:
    """The same program (preset, mode, layout, sizes, chips) compiled for other generations."""
    key = ("preset", "mode", "layout", "batch_size", "seq_len", "chips", "dtype")
    return [r for r in rows or () if r is not row and r["status"] == "ok"
            and r["generation"] != row["generation"] and all(r[k] == row[k] for k in key)]


def reason(row: dict, rows=None) -> str:
    """Why the planner and the compiler differ on this row, from the compiled bytes: which side
    differs (the sharded inputs, or the temporaries and outputs), the mechanism from `REASONS`
    where one is known, and how the same program fared on the other generations in `rows`."""
    g = 1e9
    parts = row.get("analytic_parts", {})
    out = [_reason_key(row)] if _reason_key(row) else []
    if row["status"] != "ok":
        out.append(f"the compiler needs {row.get('needed_bytes', math.nan) / g:.1f} GB "
                   f"({row.get('needed_for') or 'memory'}) of the "
                   f"{row.get('compiler_hbm_bytes_per_chip', math.nan) / g:.1f} GB it allows; "
                   f"the planner counts {row['analytic_peak_bytes_per_chip'] / g:.1f} GB in all")
        return "; ".join(out)
    if (row["generation"] in MEGACORE and row["mode"] == "train"
            and row["analytic_peak_bytes_per_chip"] < row["peak_bytes_per_chip"]):
        out.append(MEGACORE_REASON)
    planned_in = parts.get("params", 0) + parts.get("optimizer", 0) + parts.get("kv_cache", 0)
    planned_tmp = row["analytic_peak_bytes_per_chip"] - planned_in
    comp_tmp = row["peak_bytes_per_chip"] - row["argument_bytes"]
    out.append(f"sharded inputs: compiler {row['argument_bytes'] / g:.2f} GB, planner "
               f"{planned_in / g:.2f} GB; temporaries and outputs: compiler {comp_tmp / g:.2f} GB,"
               f" planner {planned_tmp / g:.2f} GB")
    sib = _siblings(row, rows)
    if sib:
        out.append("the same program elsewhere: " + ", ".join(
            f"{r['generation']} {r['analytic_peak_bytes_per_chip'] / r['peak_bytes_per_chip']:.2f}"
            for r in sorted(sib, key=lambda r: r["generation"])) + " (planner / compiler): "
            "the generations' compilers schedule and fuse the same step differently")
    return "; ".join(out)


def _seq(preset: str, T: int) -> int:
    return min(T, PRESETS[preset].max_seq_len)


def grid_points() -> list[dict]:
    """The grid: the book's presets x generation x train/serve at chapter 4's sizes, 4 to 256
    chips; two `tiny` rows first (the test suite recompiles them)."""
    pts = []

    def add(preset, topology, layout, mode, batch, seq, **kw):
        dt = {} if preset == "tiny" else dict(dtype=DTYPE, param_dtype=DTYPE)
        pts.append(dict(config=preset, topology=topology, layout=layout, mode=mode,
                        batch_size=batch, seq_len=_seq(preset, seq), **dt, **kw))

    add("tiny", "v5e:2x2", "fsdp", "train", 8, 128)
    add("tiny", "v6e:2x2", "tensor", "decode", 8, 128, cache_len=128)
    # data parallel: replicated state (the known case: llama2_7b at 8 x 2048 on 4 v5e chips)
    add("llama2_7b", "v5e:2x2", "data", "train", 8, 2048, remat="full")
    per_gen = []
    for gen in aot.GENERATIONS:
        four = FOUR[gen]
        # training, FSDP, one sequence of 2048 per chip, full remat
        per_gen.append([
            (("base", four, "fsdp", "train", 4, TRAIN_SEQ), {"remat": "full"}),
            (("llama2_7b", four, "fsdp", "train", 4, TRAIN_SEQ), {"remat": "full"}),
            (("llama3_8b", four, "tensor", "decode", 4, PRESETS["llama3_8b"].max_seq_len), {}),
            (("xl", four, "fsdp", "train", 4, TRAIN_SEQ), {"remat": "full"}),
            (("gpt2", four, "data", "forward", 8, SERVE_SEQ), {}),
            (("tinyllama_1_1b", four, "fsdp", "train", 4, TRAIN_SEQ), {"remat": "full"}),
            (("xxl", SIXTEEN[gen], "fsdp", "train", 16, TRAIN_SEQ), {"remat": "full"}),
            (("llama3_8b", SIXTY_FOUR[gen], "fsdp", "train", 64, TRAIN_SEQ), {"remat": "full"}),
            (("llama2_7b", TWO_FIFTY_SIX[gen], "fsdp", "train", 256, TRAIN_SEQ),
             {"remat": "full"}),
        ])
    for i in range(len(per_gen[0])):           # generation by generation, row by row
        for rows in per_gen:
            args, kw = rows[i]
            add(*args, **kw)
    add("large", "v5e:2x2", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("gpt2", "v6e:2x2", "data", "train", 8, 1024, remat="full")
    add("llama2_7b", "v5p:2x2x1", "tensor", "decode", 8, 4096)
    add("large", "v4:2x2x1", "tensor", "forward", 4, SERVE_SEQ)
    add("tinyllama_1_1b", "v6e:2x2", "data", "decode", 16, 2048)
    add("tinyllama_1_1b", "v5p:2x2x1", "data", "train", 8, TRAIN_SEQ, remat="full")
    # replicated or 4-way-split states the 16-32 GB chips refuse, then more serving points
    add("xxl", "v5e:2x2", "fsdp", "train", 4, TRAIN_SEQ, remat="full")
    add("llama3_8b", "v5e:2x2", "fsdp", "train", 4, TRAIN_SEQ, remat="full")
    add("llama2_7b", "v4:2x2x1", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("llama3_8b", "v6e:2x2", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("xxl", "v6e:2x2", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("xl", "v5e:2x2", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("llama2_7b", "v6e:2x2", "tensor", "decode", 8, 4096)
    add("llama2_7b", "v4:2x2x1", "tensor", "decode", 8, 4096)
    add("tinyllama_1_1b", "v5e:2x2", "tensor", "decode", 16, 2048)
    add("xxl", "v6e:2x2", "tensor", "decode", 4, 2048)
    add("llama3_8b", "v5e:2x2", "data", "decode", 4, 8192)
    add("base", "v5e:2x2", "data", "forward", 8, SERVE_SEQ)
    add("large", "v6e:2x2", "data", "forward", 8, SERVE_SEQ)
    add("xl", "v5p:2x2x1", "data", "forward", 8, SERVE_SEQ)
    add("llama2_7b", "v6e:2x2", "tensor", "forward", 4, SERVE_SEQ)
    # more points the planner and the compiler should both refuse
    add("xxl", "v4:2x2x1", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("llama2_7b", "v6e:2x2", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("llama3_8b", "v5e:2x2", "tensor", "train", 4, TRAIN_SEQ, remat="full")
    add("llama2_7b", "v5e:2x2", "tensor", "train", 4, TRAIN_SEQ, remat="full")
    add("xxl", "v5e:2x2", "tensor", "train", 4, TRAIN_SEQ, remat="full")
    add("llama2_7b", "v5e:2x2", "data", "decode", 16, 4096)
    add("llama3_8b", "v5e:2x2", "data", "forward", 8, SERVE_SEQ)
    add("xxl", "v5e:2x2", "data", "forward", 8, SERVE_SEQ)
    add("llama3_8b", "v4:2x2x1", "data", "train", 4, TRAIN_SEQ, remat="full")
    add("xxl", "v5p:2x2x1", "data", "train", 4, TRAIN_SEQ, remat="full")
    return pts


#: MaxText's published Mixtral-8x7B run (v5p-256, sequence 4096; `analysis.moe_published`) is
#: the shape of the largest MoE point.
MOE_PRESETS = ("olmoe_1b_7b", "qwen3_30b_a3b", "mixtral_8x7b")


def moe_grid_points() -> list[dict]:
    """The mixture-of-experts grid: each MoE preset trained with FSDP alone and with its
    experts split over an 'expert' axis (`compile_for_topology(expert=...)`), bf16, full remat,
    one or two sequences per chip; chapter 3d sets the planner's bytes beside the compiler's."""
    pts = []

    def add(preset, topology, expert, batch, seq):
        pts.append(dict(config=preset, topology=topology, layout="fsdp", mode="train",
                        batch_size=batch, seq_len=seq, dtype=DTYPE, param_dtype=DTYPE,
                        remat="full", expert=expert))

    add("olmoe_1b_7b", "v6e:2x2", 1, 4, TRAIN_SEQ)
    add("olmoe_1b_7b", "v6e:2x2", 4, 4, TRAIN_SEQ)
    add("olmoe_1b_7b", "v5e:4x4", 8, 16, TRAIN_SEQ)
    add("qwen3_30b_a3b", "v5p:4x4x4", 1, 64, 4096)
    # 4x4x4 chips: a logical axis must be a product of physical ones (16 = 4 x 4, not 8)
    add("qwen3_30b_a3b", "v5p:4x4x4", 16, 64, 4096)
    add("mixtral_8x7b", "v5p:4x8x8", 1, 256, 4096)
    add("mixtral_8x7b", "v5p:4x8x8", 8, 256, 4096)
    return pts
