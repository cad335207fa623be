"""The book's plot style and a few shared plotting helpers. Importing sets the style.

Chapters do `from vishwamai import plotting` in their first code cell (as `import dmol` does for
its book); nothing here downloads fonts or data.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

#: Figures are at most this wide (inches) at `figure.dpi`: 750 px, narrower than the book's text
#: column at a 1400 px window, so an image is shown at its own size and a 10 pt font stays 10 pt.
#: Wider layouts stack their panels instead. `tests/test_prose_numbers.py` checks the chapters.
MAX_WIDTH_IN = 7.5
MIN_FONT_PT = 10

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "font.size": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 12,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",  # ships with matplotlib: no font download
    "savefig.bbox": "tight",
}


def set_style() -> None:
    """Applies the book's rcParams (a colour-blind safe cycle, light grid, no top/right spines)."""
    mpl.rcParams.update(STYLE)
    plt.style.use("tableau-colorblind10")
    mpl.rcParams.update(STYLE)


def label_bars(ax, fmt: str = "{:,.0f}", fontsize: int = MIN_FONT_PT) -> None:
    """Writes each bar's height above it."""
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt.format if "{" in fmt else fmt, fontsize=fontsize, padding=2)


def band(ax, x, samples, color=None, alpha: float = 0.2, label: str | None = None):
    """Shades the min-to-max range of repeated timings around a median line.

    `samples[i]` holds every timed call at `x[i]` (a list, as `time_fn`'s `times_s`).
    """
    import numpy as np

    lo = [float(np.min(s)) for s in samples]
    hi = [float(np.max(s)) for s in samples]
    return ax.fill_between(list(x), lo, hi, color=color, alpha=alpha, lw=0, label=label)


set_style()


def verdict_heatmap(grid, *, compiler: str, column: str = "slice", ax=None):
    """Planner against a compiler, one cell per (point, `column`) of a compile grid.

    `grid` is a DataFrame of `tpu_grid` / `gpu_grid` rows with 'point' and `column` added.
    Colours: green both fit (label: planner / compiler bytes), grey both refuse (label: bytes
    the compiler needed), red planner fits and the compiler refuses, orange the reverse (✗:
    the verdicts differ). Returns the axes.
    """
    import numpy as np
    codes = {(True, True): 0, (False, False): 1, (True, False): 2, (False, True): 3}
    grid = grid.assign(verdict=[codes[(bool(a), s == "ok")]
                                for a, s in zip(grid["analytic_fits"], grid["status"])])
    heat = grid.pivot_table(index="point", columns=column, values="verdict", aggfunc="first")
    heat = heat[sorted(heat.columns, key=lambda c: (c.split()[0], int(c.split("x")[-1])))]
    cmap = mpl.colors.ListedColormap(["#59a14f", "#bab0ac", "#e15759", "#f28e2b"])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * len(heat.columns) + 4),
                                      0.32 * len(heat) + 2))
    ax.imshow(heat.to_numpy(dtype=float), cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto")
    label = {(r["point"], r[column]): (f"{r['analytic_over_compiler']:.2f}" if r["status"] == "ok"
                                       else f"{r['needed_bytes'] / 1e9:.0f}G")
             for r in grid.to_dict("records")}
    for i, p in enumerate(heat.index):
        for j, s in enumerate(heat.columns):
            if not np.isnan(heat.iloc[i, j]):
                txt = label[(p, s)] + (" ✗" if heat.iloc[i, j] >= 2 else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize=MIN_FONT_PT)
    ax.set_xticks(range(len(heat.columns)), heat.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(heat.index)), heat.index, fontsize=8)
    ax.grid(False)
    ax.set_title(f"Planner vs {compiler} per device. green: both fit (label: planner / compiler "
                 "bytes); grey: both refuse (label: bytes the compiler needed);\nred: planner "
                 f"fits, compiler refuses; orange: planner refuses, compiler fits (✗ = verdicts "
                 "differ)", fontsize=9)
    return ax
