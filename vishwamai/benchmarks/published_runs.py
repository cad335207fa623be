"""Published measured training runs, predicted twice: by the planner at a stated efficiency and
by the TPU compiler's clock (`analysis.clock`), neither using the published MFU.

    python -m vishwamai.benchmarks.published_runs --out book/results/published_runs.json \
        [--keys KEY ...] [--rows DIR]

Each TPU run is compiled at its published configuration (`aot.compile_for_topology`: model,
topology, global batch, sequence, remat, bf16 compute with f32 parameters, FSDP) and its
whole-step estimated cycles turned into seconds at the chip's clock. `--rows DIR` reuses
compiled rows saved as DIR/<key>.json (with their 'step' figures) instead of compiling.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib

from vishwamai.analysis import planner
from vishwamai.analysis.clock import step_seconds
from vishwamai.analysis.flops import flops
from vishwamai.analysis.hardware import get_chip
from vishwamai.analysis.published import RUNS

#: The planner's stated efficiency (compute alone) and overlap for every run.
PLANNER_MFU = 0.4
PLANNER_OVERLAP = "none"


def planner_prediction(run: dict) -> dict:
    s = planner.step(run["model"], run["hardware"], {run["layout"]: run["chips"]},
                     batch=run["global_batch"], seq_len=run["seq_len"], mfu=PLANNER_MFU,
                     overlap=PLANNER_OVERLAP, remat=run["remat"])
    return {"step_s": s["step_s"], "tokens_per_s_per_chip": s["tokens_per_s_per_chip"],
            "compute_s": s["compute_s"], "comm_s": s["comm_s"], "fits": s["fits"],
            "mfu_assumed": PLANNER_MFU, "overlap": PLANNER_OVERLAP}


def compile_run(run: dict) -> dict:
    from vishwamai import aot
    from vishwamai.measure import step_figures
    r = aot.compile_for_topology(run["model"], run["topology"], layout=run["layout"],
                                 mode="train", batch_size=run["global_batch"],
                                 seq_len=run["seq_len"], remat=run["remat"], dtype=run["dtype"],
                                 param_dtype="float32", hlo=True)
    text = r.pop("hlo", "")
    if r["status"] == "ok":
        r["step"] = step_figures(text, {"flops": r["flops_per_chip"],
                                        "bytes accessed": r["bytes_accessed_per_chip"]})
    return r


def clock_prediction(run: dict, row: dict) -> dict:
    if row.get("status") != "ok":
        return {"status": row.get("status"), "needed_bytes": row.get("needed_bytes")}
    chip = get_chip(run["hardware"])
    devices_per_chip = 2 if run["hardware"] == "tpu7x" else 1
    tokens = run["global_batch"] * run["seq_len"] / (run["chips"] * devices_per_chip)
    fpt = flops(run["model"], batch=1, seq_len=run["seq_len"], mode="train",
                convention="full", remat="none")["model"] / run["seq_len"]
    est = step_seconds(row["step"], chip, tokens_per_device=tokens, model_flops_per_token=fpt,
                       devices_per_chip=devices_per_chip)
    return {"status": "ok", "step_s": est["seconds"]["total"], "seconds": est["seconds"],
            "tokens_per_s_per_chip": est["tokens_per_s_per_chip"], "mfu_implied": est["mfu"],
            "clock_hz": est["clock_hz"], "cycles": est["cycles"],
            "flops_per_chip": row["step"]["flops"], "peak_bytes_per_chip":
            row.get("peak_bytes_per_chip"), "compile_s": row.get("compile_s"),
            "loops": row["step"]["loops"]}


def run_all(keys=None, rows_dir=None) -> list[dict]:
    out = []
    for run in RUNS:
        if keys and run["key"] not in keys:
            continue
        rec = {**run, "planner": planner_prediction(run)}
        rec["planner"]["ratio"] = (rec["planner"]["tokens_per_s_per_chip"]
                                   / run["tokens_per_s_per_chip"])
        if run["topology"]:
            path = pathlib.Path(rows_dir or "") / f"{run['key']}.json"
            row = json.loads(path.read_text()) if rows_dir and path.exists() else compile_run(run)
            clk = clock_prediction(run, row)
            if clk.get("status") == "ok":
                clk["ratio"] = clk["tokens_per_s_per_chip"] / run["tokens_per_s_per_chip"]
                clk["within_20pct"] = abs(clk["ratio"] - 1) <= 0.20
            rec["clock"] = clk
        out.append(rec)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", nargs="*")
    ap.add_argument("--rows", help="folder of compiled rows <key>.json to reuse")
    a = ap.parse_args(argv)
    payload = {"benchmark": "published_runs",
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "planner_mfu": PLANNER_MFU, "planner_overlap": PLANNER_OVERLAP,
               "runs": run_all(a.keys, a.rows)}
    pathlib.Path(a.out).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return payload


if __name__ == "__main__":
    main()
