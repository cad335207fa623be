"""The book's training calculator: a view of the planner over a grid of settings.

Each row is one setting (preset, hardware, chips, layout, batch per chip, sequence, remat) and
what `vishwamai.analysis.planner.step` says about it: bytes per chip by part of the step the
package runs, the budget (the compiler's HBM allowance where known, else the datasheet),
whether it fits and by how much it falls short, and, for a setting that fits, the step's compute
time at the stated MFU, its communication over the networks the mesh axis lies on (NVLink
domain and InfiniBand on GPUs, the ICI torus on TPUs) and the step time under the stated
overlap model. The rows are plain JSON-able dicts; the chapter embeds them in a self-contained
HTML page.
"""
from __future__ import annotations

import itertools
import json

from vishwamai import validate
from vishwamai.analysis.hardware import get_chip
from vishwamai.analysis.network import Mesh
from vishwamai.analysis.planner import step
from vishwamai.config import get_preset

MFU = 0.40
OVERLAP = "full"
GiB = 2**30
DEFAULT_GRID = {
    "preset": ("tinyllama_1_1b", "llama2_7b", "llama3_8b"),
    "hardware": ("tpu_v5e", "tpu_v5p", "tpu_v6e", "tpu7x", "h100", "gb200"),
    "chips": (8, 64, 256, 2048),
    "layout": ("data", "fsdp", "tensor"),
    "batch_per_chip": (1, 4, 16),
    "seq_len": (2048, 8192),
    "remat": ("none", "full"),
}
#: Chapter 6's worked sizing: Llama-3-8B on its training tokens, FSDP, one sequence per chip.
SIZING = {"preset": "llama3_8b", "hardware": ("tpu_v5p", "h100"), "chips": 2048,
          "layout": "fsdp", "batch_per_chip": 1, "seq_len": 8192, "remat": "full",
          "tokens": 15e12}
PARTS = ("params", "grads", "optimizer", "activations", "workspace", "loss_head", "gather")


def calculator_row(preset: str, hardware: str, chips: int, layout: str, batch_per_chip: int,
                   seq_len: int, remat: str, *, mfu: float = MFU, overlap=OVERLAP) -> dict:
    """One grid point. Memory in GiB per chip (3 decimals), times in seconds (6 decimals).

    Under 'tensor' the chips split one batch of `batch_per_chip` sequences (the batch is not
    split); under 'data' and 'fsdp' the global batch is `chips * batch_per_chip`. A setting the
    planner refuses (a tensor axis wider than the heads, more chips than a TPU slice holds)
    carries its reason in 'invalid'; one that does not fit carries 'lacks_gib' and no times.
    """
    cfg = get_preset(preset).replace(dtype="bfloat16", param_dtype="bfloat16")
    chip = get_chip(hardware)
    batch = batch_per_chip if layout == "tensor" else batch_per_chip * chips
    row = {"preset": preset, "hardware": hardware, "chips": chips, "layout": layout,
           "batch_per_chip": batch_per_chip, "seq_len": seq_len, "remat": remat,
           "mfu_assumed": mfu, "overlap": overlap, "nvlink_domain": chip.nvlink_domain,
           "budget_gib": round((chip.compiler_hbm_bytes or chip.hbm_bytes) / GiB, 3),
           "budget_is": "compiler allowance" if chip.compiler_hbm_bytes else "datasheet"}
    try:
        s = step(cfg, chip, Mesh(**{layout: chips}), batch=batch, seq_len=seq_len, mfu=mfu,
                 overlap=overlap, remat=remat, attention="flash")
    except validate.InputError as e:
        return {**row, "invalid": str(e), "fits": False}
    mem = s["memory"]
    row.update({f"{k}_gib": round(mem[k] / GiB, 3) for k in PARTS})
    row.update({"total_gib": round(mem["total"] / GiB, 3), "fits": bool(s["fits"]),
                "lacks_gib": round(s["lacks"] / GiB, 3),
                "network": " + ".join(sorted(s["comm_by_tier_s"])) or "none"})
    if s["fits"]:
        row.update({"compute_s": round(s["compute_s"], 6), "comm_s": round(s["comm_s"], 6),
                    "step_s": round(s["step_s"], 6), "mfu": round(s["mfu"], 4),
                    "tokens_per_s_per_chip": round(s["tokens_per_s_per_chip"], 1)})
    return row


def calculator_grid(grid: dict | None = None, **kwargs) -> list[dict]:
    """Every combination of `grid` (default `DEFAULT_GRID`; a partial dict overrides axes)."""
    g = dict(DEFAULT_GRID, **(grid or {}))
    unknown = set(g) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(f"unknown grid axes {sorted(unknown)}; accepted: {list(DEFAULT_GRID)}")
    return [calculator_row(*combo, **kwargs)
            for combo in itertools.product(*(g[k] for k in DEFAULT_GRID))]


_COLORS = {"params": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868",
           "activations": "#c44e52", "workspace": "#8172b3", "loss_head": "#937860",
           "gather": "#da8bc3"}
_JS = """(function() {
  var root = document.getElementById("ID");
  var D = JSON.parse(document.getElementById("ID-data").textContent);
  var sels = root.querySelectorAll("select");
  function fmt(x, d) { return Number(x).toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: d}); }
  function pick() {
    var want = {};
    sels.forEach(function(s) { want[s.dataset.axis] = s.value; });
    return D.rows.find(function(r) {
      return Object.keys(want).every(function(k) { return String(r[k]) === want[k]; }); });
  }
  function draw() {
    var r = pick(), bar = root.querySelector(".bar"), leg = root.querySelector(".legend");
    var v = root.querySelector(".verdict"), det = root.querySelector(".detail");
    bar.innerHTML = ""; leg.innerHTML = ""; det.innerHTML = "";
    if (!r) { v.textContent = "not in the grid"; return; }
    if (r.invalid) { v.textContent = "not a valid setting: " + r.invalid; v.style.color = "#555"; return; }
    var scale = Math.max(r.total_gib, r.budget_gib), left = 0;
    D.parts.forEach(function(p) {
      var w = 100 * r[p + "_gib"] / scale, seg = document.createElement("div");
      seg.style.cssText = "position:absolute;top:0;height:100%;left:" + left + "%;width:" + w + "%;background:" + D.colors[p];
      seg.title = p + ": " + fmt(r[p + "_gib"], 2) + " GiB"; bar.appendChild(seg); left += w;
      leg.innerHTML += '<span style="display:inline-block;width:10px;height:10px;background:' + D.colors[p] + '"></span> ' + p + " " + fmt(r[p + "_gib"], 2) + " GiB &nbsp; ";
    });
    var hbm = document.createElement("div");
    hbm.style.cssText = "position:absolute;top:-4px;height:42px;width:3px;background:black;left:calc(" + (100 * r.budget_gib / scale) + "% - 1px)";
    bar.appendChild(hbm);
    v.textContent = r.fits ? ("fits: " + fmt(r.total_gib, 1) + " GiB of " + fmt(r.budget_gib, 1) + " GiB per chip (" + r.budget_is + ", black line)")
      : ("does not fit: " + fmt(r.total_gib, 1) + " GiB of " + fmt(r.budget_gib, 1) + " GiB per chip (" + r.budget_is + "): lacks " + fmt(r.lacks_gib, 1) + " GiB");
    v.style.color = r.fits ? "#1a7f37" : "#b3261e";
    var cells = [["network of the layout's collectives", r.network + (r.nvlink_domain ? " (NVLink domain: " + r.nvlink_domain + " GPUs)" : "")]];
    if (r.fits) cells = cells.concat([
      ["compute per step (s, at " + fmt(100 * r.mfu_assumed, 0) + "% MFU)", fmt(r.compute_s, 3)],
      ["communication per step (s, ring/torus)", fmt(r.comm_s, 3)],
      ["step (s, overlap: " + r.overlap + ")", fmt(r.step_s, 3)],
      ["MFU of the whole step", fmt(100 * r.mfu, 1) + "%"],
      ["tokens / s / chip", fmt(r.tokens_per_s_per_chip, 0)]]);
    det.innerHTML = cells.map(function(c) {
      return '<tr><td style="padding:2px 12px 2px 0">' + c[0] + '</td><td style="text-align:right">' + c[1] + "</td></tr>"; }).join("");
  }
  sels.forEach(function(s) { s.addEventListener("change", draw); });
  draw();
})();"""


def calculator_html(rows: list[dict], *, element_id: str = "vishwamai-calculator") -> str:
    """A self-contained HTML + JavaScript calculator over `rows` (no network, no kernel): the
    rows as JSON in a `<script type="application/json">`, and a few lines of JavaScript that
    pick the row the controls name and draw its memory against the budget, the verdict (and
    what it lacks), the network, and, when it fits, the times and throughput with the MFU and
    overlap they assume."""
    axes = {k: sorted({r[k] for r in rows}, key=lambda v: (isinstance(v, str), v))
            for k in DEFAULT_GRID}
    data = json.dumps({"axes": axes, "rows": rows, "parts": list(PARTS), "colors": _COLORS},
                      separators=(",", ":")).replace("</", "<\\/")
    labels = {"preset": "model", "hardware": "chip", "chips": "chips", "layout": "layout",
              "batch_per_chip": "batch / chip", "seq_len": "sequence", "remat": "remat"}
    controls = "".join(
        f'<label style="margin-right:12px">{labels[k]} <select data-axis="{k}">'
        + "".join(f'<option value="{v}">{v}</option>' for v in axes[k]) + "</select></label>"
        for k in DEFAULT_GRID)
    i = element_id
    return (f'<div id="{i}" style="font-family:sans-serif;font-size:14px;border:1px solid #ccc;'
            f'padding:10px;max-width:760px">\n'
            f'<div style="margin-bottom:8px;line-height:2">{controls}</div>\n'
            '<div class="bar" style="position:relative;height:34px;background:#f4f4f4;'
            'border:1px solid #999"></div>\n'
            '<div class="legend" style="margin:6px 0;font-size:13px"></div>\n'
            '<div class="verdict" style="font-size:15px;font-weight:bold;margin:6px 0"></div>\n'
            '<table class="detail" style="border-collapse:collapse;font-size:13px;margin:0">'
            '</table>\n'
            f'<script type="application/json" id="{i}-data">{data}</script>\n'
            f'<script>\n{_JS.replace("ID", i)}\n</script>\n</div>')
