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
