"""Weight-only int8 / fp8 decode, measured: bytes a decode step reads, per-token latency against the
roofline's prediction, and quality after training.

    python -m vishwamai.benchmarks.quant [--latency-preset small] [--train-preset tiny]
        [--steps 300] [--rounds 5] [--out book/results/quant.json]

- bytes: `quant.decode_weight_bytes` (the real tree: kernels, scales, the rest) per storage and
  the compiled CPU decode step's `memory_analysis` arguments and `cost_analysis` bytes.
- latency: `benchmarks.decode.measure_decode` (generate(2N) - generate(N)) / N for the float
  model and its int8 / fp8 versions, `--repeats` pairs of each in turn per round (a drifting
  shared machine hits all alike); speedup = f32 / quantized per round, median and p10-p90 over
  rounds.
  Predicted: bytes read per token / the matrix-vector bandwidth measured in the same process.
- quality: the train preset trained `--steps` steps on the package's text (`vishwamai.data`),
  quantized once; held-out loss (fixed validation windows) and greedy continuations of
  validation prompts compared token by token with the float model's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vishwamai import quant, validate
from vishwamai.analysis.serving import kv_bytes_per_token
from vishwamai.benchmarks.decode import measure_decode
from vishwamai.data import byte_tokens, random_windows, train_val_split
from vishwamai.measure import env_info, matvec_bandwidth
from vishwamai.model import VishwamAI
from vishwamai.train import fit, make_optimizer

MODES = ("int8", "fp8")


def bytes_table(preset: str, *, batch: int = 1, cache_len: int = 64) -> dict:
    """Analytic and compiled bytes of one decode step per weight storage."""
    base = VishwamAI(preset).config
    rows = {}
    for name, cfg in (("float32", base), ("bfloat16", base.replace(param_dtype="bfloat16")),
                      ("int8", base.replace(weight_quant="int8")),
                      ("fp8", base.replace(weight_quant="fp8"))):
        m = VishwamAI(cfg)
        row = {"analytic": quant.decode_weight_bytes(m, batch=batch)}
        if name != "bfloat16":   # bf16 matmuls on this CPU are converted: analytic only
            _, st = quant.compiled_decode_step(m, batch=batch, cache_len=cache_len)
            row["compiled"] = {"argument_bytes": st.argument_bytes,
                               "bytes_accessed": st.bytes_accessed, "temp_bytes": st.temp_bytes}
        rows[name] = row
    w = {k: v["analytic"]["total"] for k, v in rows.items()}
    ratios = {"f32_over_int8": w["float32"] / w["int8"],
              "bf16_over_int8": w["bfloat16"] / w["int8"],
              "f32_over_fp8": w["float32"] / w["fp8"],
              "compiled_accessed_f32_over_int8": rows["float32"]["compiled"]["bytes_accessed"]
              / rows["int8"]["compiled"]["bytes_accessed"],
              "compiled_args_f32_over_int8": rows["float32"]["compiled"]["argument_bytes"]
              / rows["int8"]["compiled"]["argument_bytes"]}
    return {"preset": preset, "batch": batch, "cache_len": cache_len, "rows": rows,
            "ratios": ratios}


def _spread(x) -> dict:
    x = np.asarray(x, float)
    return {"median": float(np.median(x)), "p10": float(np.percentile(x, 10)),
            "p90": float(np.percentile(x, 90))}


def latency(preset: str, *, batch: int = 1, prompt_len: int = 32, new_tokens: int = 16,
            rounds: int = 5, repeats: int = 2) -> dict:
    """Per-token decode latency of the float model and its quantized versions, alternated."""
    model = VishwamAI(preset)
    params = model.init(jax.random.PRNGKey(0))
    models = {"float32": (model, params)}
    for mode in MODES:
        models[mode] = quant.quantize(model, params, mode)
    bw = matvec_bandwidth()
    cache = prompt_len + 2 * new_tokens
    kv = batch * (prompt_len + new_tokens) * kv_bytes_per_token(model.config, "float32")
    logits = batch * model.config.vocab_size * 4
    pred = {k: (quant.decode_weight_bytes(m, batch=batch)["total"] + kv + logits) / bw
            for k, (m, _) in models.items()}
    per = {k: [] for k in models}
    for _ in range(rounds):
        for k, (m, p) in models.items():
            r = measure_decode(m, p, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                               repeats=repeats)
            per[k].append(r["per_token_s"]["median"])
    bw_after = matvec_bandwidth()
    out = {"preset": preset, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
           "cache_len": cache, "rounds": rounds, "repeats_per_round": repeats,
           "matvec_bandwidth": [bw, bw_after], "modes": {}}
    for k in models:
        out["modes"][k] = {"per_token_s": _spread(per[k]), "predicted_s": pred[k],
                           "measured_over_predicted": float(np.median(per[k])) / pred[k]}
        if k != "float32":
            out["modes"][k]["speedup"] = _spread(np.asarray(per["float32"]) / np.asarray(per[k]))
            out["modes"][k]["predicted_speedup"] = pred["float32"] / pred[k]
    return out


def quality(preset: str, *, steps: int = 300, batch: int = 16, seq_len: int = 128,
            val_windows: int = 32, prompts: int = 8, prompt_len: int = 32,
            continuation: int = 32) -> dict:
    """Train briefly, quantize once, compare held-out loss and greedy continuations."""
    train_tok, val_tok = train_val_split(byte_tokens())
    model = VishwamAI(preset)
    state, hist = fit(model, random_windows(train_tok, batch, seq_len, seed=0), steps,
                      optimizer=make_optimizer(3e-3, warmup_steps=max(1, steps // 10),
                                               total_steps=steps), log_every=max(1, steps // 10))
    params = state.params
    val = next(random_windows(val_tok, val_windows, seq_len, seed=1))
    pr = next(random_windows(val_tok, prompts, prompt_len, seed=2))[:, :prompt_len]
    loss_of = jax.jit(lambda m, p: m.loss(p, val), static_argnums=0)
    ref_loss = float(model.loss(params, val))
    ref_out = np.asarray(model.generate(params, pr, continuation))[:, prompt_len:]
    out = {"preset": preset, "steps": steps, "train_loss_last": float(hist[-1]["loss"]),
           "val_tokens": int(val.size), "float32": {"val_loss": ref_loss}, "prompts": prompts,
           "continuation": continuation}
    del loss_of
    for mode in MODES:
        qm, qp = quant.quantize(model, params, mode)
        loss = float(qm.loss(qp, val))
        gen = np.asarray(qm.generate(qp, pr, continuation))[:, prompt_len:]
        same = gen == ref_out
        first_diff = [int(np.argmin(r)) if not r.all() else continuation for r in same]
        out[mode] = {"val_loss": loss, "rel_diff": (loss - ref_loss) / ref_loss,
                     "tokens_agree": float(same.mean()),
                     "agree_before_first_difference": _spread(first_diff),
                     "identical_rows": int(sum(r.all() for r in same))}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-preset", default="small")
    ap.add_argument("--train-preset", default="tiny")
    ap.add_argument("--steps", type=validate.cli_type(validate.positive_int),
                    default=300)
    ap.add_argument("--rounds", type=validate.cli_type(validate.positive_int),
                    default=5)
    ap.add_argument("--repeats", type=validate.cli_type(validate.positive_int), default=2,
                    help="timed (N, 2N) pairs per model per round (their median is the round's)")
    ap.add_argument("--batch", type=validate.cli_type(validate.positive_int), default=1)
    ap.add_argument("--out", default=os.path.join("book", "results", "quant.json"))
    a = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    res = {"started": started, "env": env_info(),
           "bytes": bytes_table(a.latency_preset, batch=a.batch),
           "latency": latency(a.latency_preset, batch=a.batch, rounds=a.rounds,
                                 repeats=a.repeats),
           "quality": quality(a.train_preset, steps=a.steps)}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(json.dumps({"bytes": res["bytes"]["ratios"],
                      "latency": {k: v.get("speedup", v["per_token_s"])
                                  for k, v in res["latency"]["modes"].items()},
                      "quality": {k: v for k, v in res["quality"].items() if k in MODES}},
                     indent=1))
    return res


if __name__ == "__main__":
    main()
