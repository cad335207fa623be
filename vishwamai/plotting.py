"""The book's plot style and a few shared plotting helpers. Importing sets the style.

Chapters do `from vishwamai import plotting` in their first code cell (as `import dmol` does for
its book); nothing here downloads fonts or data.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",  # ships with matplotlib: no font download
    "savefig.bbox": "tight",
}


def set_style() -> None:
    """Applies the book's rcParams (a colour-blind safe cycle, light grid, no top/right spines)."""
    mpl.rcParams.update(STYLE)
    plt.style.use("tableau-colorblind10")
    mpl.rcParams.update(STYLE)


def label_bars(ax, fmt: str = "{:,.0f}", fontsize: int = 8) -> None:
    """Writes each bar's height above it."""
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt.format if "{" in fmt else fmt, fontsize=fontsize, padding=2)


set_style()
