"""A precomputed grid for the book's training calculator: memory per chip, fit, step time.

Each row is one setting (preset, hardware, chips, layout, batch per chip, sequence, remat) and
what the package says about it: bytes per chip by part (`roofline.plan`, bf16 weights and
activations, f32 AdamW moments), whether they fit in HBM, the step's compute time at an
assumed hardware-FLOPs utilisation (`HFU`, remat's recomputation included, so remat costs
time), and its communication time over the chips' ICI / NVLink (`comms.comm_time`, ring
collectives, not overlapped). The rows are plain JSON-able dicts; the chapter embeds them in a
self-contained HTML page.
"""
from __future__ import annotations

import itertools
import json

from vishwamai.analysis.comms import comm_time
from vishwamai.analysis.flops import flops
from vishwamai.analysis.hardware import get_chip, peak_flops
from vishwamai.analysis.roofline import plan
from vishwamai.config import get_preset

HFU = 0.5
GiB = 2**30
DEFAULT_GRID = {
    "preset": ("tinyllama_1_1b", "llama2_7b", "llama3_8b"),
    "hardware": ("tpu_v5e", "tpu_v5p", "tpu_v6e", "h100"),
    "chips": (8, 64, 256),
    "layout": ("data", "fsdp", "tensor"),
    "batch_per_chip": (1, 4, 16),
    "seq_len": (2048, 8192),
    "remat": ("none", "full"),
}
PARTS = ("params", "grads", "optimizer", "activations", "workspace")


def calculator_row(preset: str, hardware: str, chips: int, layout: str, batch_per_chip: int,
                   seq_len: int, remat: str, *, hfu: float = HFU) -> dict:
    """One grid point. Memory in GiB per chip (rounded to 3 decimals), times in seconds.

    Under 'tensor' the chips split one batch of `batch_per_chip` sequences (the batch is not
    split); under 'data' and 'fsdp' the global batch is `chips * batch_per_chip`.
    """
    cfg = get_preset(preset).replace(dtype="bfloat16", param_dtype="bfloat16")
    batch = batch_per_chip if layout == "tensor" else batch_per_chip * chips
    p = plan(cfg, hardware, chips, batch=batch, seq_len=seq_len, mode="train", remat=remat,
             sharding=layout, attention="flash")
    per = p["per_chip"]
    total = sum(per[k] for k in PARTS)
    chip = get_chip(hardware)
    f = flops(cfg, batch=batch, seq_len=seq_len, mode="train", remat=remat)
    compute = f["hardware"] / (chips * peak_flops("bfloat16", chip)[0] * hfu)
    comm = comm_time(cfg, layout, chip, n=chips, batch=batch, seq_len=seq_len)["comm_s"]
    row = {"preset": preset, "hardware": hardware, "chips": chips, "layout": layout,
           "batch_per_chip": batch_per_chip, "seq_len": seq_len, "remat": remat}
    row.update({f"{k}_gib": round(per[k] / GiB, 3) for k in PARTS})
    row.update({"total_gib": round(total / GiB, 3), "hbm_gib": round(chip.hbm_bytes / GiB, 3),
                "fits": bool(total <= chip.hbm_bytes),
                "compute_s": round(compute, 6), "comm_s": round(comm, 6),
                "step_s": round(max(compute, comm), 6),
                "tokens_per_s_per_chip": round(batch * seq_len / max(compute, comm) / chips, 1)})
    return row


def calculator_grid(grid: dict | None = None, *, hfu: float = HFU) -> list[dict]:
    """Every combination of `grid` (default `DEFAULT_GRID`; a partial dict overrides axes)."""
    g = dict(DEFAULT_GRID, **(grid or {}))
    unknown = set(g) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(f"unknown grid axes {sorted(unknown)}; accepted: {list(DEFAULT_GRID)}")
    return [calculator_row(*combo, hfu=hfu)
            for combo in itertools.product(*(g[k] for k in DEFAULT_GRID))]


_COLORS = {"params": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868",
           "activations": "#c44e52", "workspace": "#8172b3"}


def calculator_html(rows: list[dict], *, element_id: str = "vishwamai-calculator") -> str:
    """A self-contained HTML + JavaScript calculator over `rows` (no network, no kernel).

    The rows are embedded as JSON in a `<script type="application/json">` element; a few
    lines of inline JavaScript pick the row matching the controls and draw its memory per
    chip as a stacked bar against the chip's HBM, with the fit verdict and the step time.
    """
    axes = {k: sorted({r[k] for r in rows}, key=lambda v: (isinstance(v, str), v))
            for k in DEFAULT_GRID}
    data = json.dumps({"axes": axes, "rows": rows, "parts": list(PARTS),
                       "colors": _COLORS}, separators=(",", ":")).replace("</", "<\\/")
    labels = {"preset": "model", "hardware": "chip", "chips": "chips", "layout": "layout",
              "batch_per_chip": "batch / chip", "seq_len": "sequence", "remat": "remat"}
    controls = "".join(
        f'<label style="margin-right:12px">{labels[k]} <select data-axis="{k}">'
        + "".join(f'<option value="{v}">{v}</option>' for v in axes[k]) + "</select></label>"
        for k in DEFAULT_GRID)
    i = element_id
    return f"""<div id="{i}" style="font-family:sans-serif;font-size:14px;border:1px solid #ccc;padding:10px;max-width:760px">
<div style="margin-bottom:8px;line-height:2">{controls}</div>
<div class="bar" style="position:relative;height:34px;background:#f4f4f4;border:1px solid #999"></div>
<div class="legend" style="margin:6px 0;font-size:13px"></div>
<div class="verdict" style="font-size:15px;font-weight:bold;margin:6px 0"></div>
<table class="detail" style="border-collapse:collapse;font-size:13px;margin:0"></table>
<script type="application/json" id="{i}-data">{data}</script>
<script>
(function() {{
  var root = document.getElementById("{i}");
  var D = JSON.parse(document.getElementById("{i}-data").textContent);
  var sels = root.querySelectorAll("select");
  function fmt(x, d) {{ return Number(x).toLocaleString("en-US", {{maximumFractionDigits: d, minimumFractionDigits: d}}); }}
  function pick() {{
    var want = {{}};
    sels.forEach(function(s) {{ want[s.dataset.axis] = s.value; }});
    return D.rows.find(function(r) {{
      return Object.keys(want).every(function(k) {{ return String(r[k]) === want[k]; }});
    }});
  }}
  function draw() {{
    var r = pick(), bar = root.querySelector(".bar");
    bar.innerHTML = ""; root.querySelector(".legend").innerHTML = "";
    if (!r) {{ root.querySelector(".verdict").textContent = "not in the grid"; return; }}
    var scale = Math.max(r.total_gib, r.hbm_gib), left = 0;
    D.parts.forEach(function(p) {{
      var w = 100 * r[p + "_gib"] / scale, seg = document.createElement("div");
      seg.style.cssText = "position:absolute;top:0;height:100%;left:" + left + "%;width:" + w + "%;background:" + D.colors[p];
      seg.title = p + ": " + fmt(r[p + "_gib"], 2) + " GiB"; bar.appendChild(seg); left += w;
      root.querySelector(".legend").innerHTML += '<span style="display:inline-block;width:10px;height:10px;background:' + D.colors[p] + '"></span> ' + p + " " + fmt(r[p + "_gib"], 2) + " GiB &nbsp; ";
    }});
    var hbm = document.createElement("div");
    hbm.style.cssText = "position:absolute;top:-4px;height:42px;width:3px;background:black;left:calc(" + (100 * r.hbm_gib / scale) + "% - 1px)";
    hbm.title = "HBM " + fmt(r.hbm_gib, 1) + " GiB"; bar.appendChild(hbm);
    var v = root.querySelector(".verdict");
    v.textContent = (r.fits ? "fits: " : "does not fit: ") + fmt(r.total_gib, 1) + " GiB of " + fmt(r.hbm_gib, 1) + " GiB HBM per chip (black line)";
    v.style.color = r.fits ? "#1a7f37" : "#b3261e";
    var cells = [["compute time per step (s, HFU {HFU:.0%})", fmt(r.compute_s, 3)],
                 ["communication per step (s, ring, not overlapped)", fmt(r.comm_s, 3)],
                 ["step time (s)", fmt(r.step_s, 3)],
                 ["tokens / s / chip", fmt(r.tokens_per_s_per_chip, 0)]];
    root.querySelector(".detail").innerHTML = cells.map(function(c) {{
      return '<tr><td style="padding:2px 12px 2px 0">' + c[0] + '</td><td style="text-align:right">' + c[1] + "</td></tr>"; }}).join("");
  }}
  sels.forEach(function(s) {{ s.addEventListener("change", draw); }});
  draw();
}})();
</script>
</div>"""
