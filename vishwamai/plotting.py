"""The book's plot style and a few shared plotting helpers. Importing sets the style.

Chapters do `from vishwamai import plotting` in their first code cell (as `import dmol` does for
its book); nothing here downloads fonts or data.
"""
from __future__ import annotations

import os

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


def label_levels(ax, levels: dict, *, fmt: str = "{name} {value:,.0f}", color="dimgrey") -> None:
    """Draws a horizontal line per `levels` item and names it just right of the axes.

    The names are spread apart (in display space) so two close levels never print on top of
    each other; each name keeps its line's height when there is room. Returns nothing.
    """
    items = sorted(levels.items(), key=lambda kv: kv[1])
    for _, v in items:
        ax.axhline(v, color="grey", lw=0.8)
    fig = ax.figure
    fig.canvas.draw()
    to_disp, to_axes = ax.transData, ax.transAxes.inverted()
    ys = [to_disp.transform((1.0, v))[1] for _, v in items]
    gap = 1.25 * MIN_FONT_PT * fig.dpi / 72
    placed = []
    for y in ys:
        placed.append(max(y, placed[-1] + gap) if placed else y)
    shift = max(0.0, placed[-1] - to_disp.transform((1.0, ax.get_ylim()[1]))[1]) if placed else 0
    placed = [p - shift for p in placed]
    for (name, v), y in zip(items, placed):
        ya = to_axes.transform((0, y))[1]
        ax.annotate(fmt.format(name=name, value=v), xy=(1.0, to_axes.transform(
                        to_disp.transform((1.0, v)))[1]), xycoords="axes fraction",
                    xytext=(1.02, ya), textcoords="axes fraction", va="center",
                    fontsize=MIN_FONT_PT, color=color,
                    arrowprops=dict(arrowstyle="-", color="lightgrey", lw=0.6))


VERDICT_COLOURS = ("#59a14f", "#bab0ac", "#e15759", "#f28e2b")
VERDICT_NAMES = ("both fit (label: planner / compiler bytes)",
                 "both refuse (label: bytes the compiler needed)",
                 "planner fits, compiler refuses (✗)", "planner refuses, compiler fits (✗)")


def verdict_legend(fig) -> None:
    """The colour key of `verdict_heatmap`, once per figure, below its panels."""
    handles = [mpl.patches.Patch(color=c, label=n) for c, n in zip(VERDICT_COLOURS, VERDICT_NAMES)]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=MIN_FONT_PT)


def verdict_heatmap(grid, *, compiler: str, column: str = "slice", prefix: str | None = None,
                    ax=None):
    """Planner against a compiler, one cell per (point, `column`) of a compile grid.

    `grid` is a DataFrame of `tpu_grid` / `gpu_grid` rows with 'point' and `column` added;
    `prefix`, if given, names a column whose value starts each cell's label (the chip count when
    the columns are chip generations, so a sparse grid needs four columns, not sixteen).
    Colours: green both fit (label: planner / compiler bytes), grey both refuse (label: bytes
    the compiler needed), red planner fits and the compiler refuses, orange the reverse (✗:
    the verdicts differ). Column names print above and below the cells. Returns the axes.
    """
    import numpy as np
    codes = {(True, True): 0, (False, False): 1, (True, False): 2, (False, True): 3}
    grid = grid.assign(verdict=[codes[(bool(a), s == "ok")]
                                for a, s in zip(grid["analytic_fits"], grid["status"])])
    heat = grid.pivot_table(index="point", columns=column, values="verdict", aggfunc="first")

    def order(c):
        head, _, tail = str(c).partition(" x")
        return (head, int(tail) if tail.isdigit() else 0)
    heat = heat[sorted(heat.columns, key=order)]
    cmap = mpl.colors.ListedColormap(list(VERDICT_COLOURS))
    if ax is None:
        fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 0.3 * len(heat) + 2.4), layout="constrained")
        verdict_legend(fig)
    ax.imshow(heat.to_numpy(dtype=float), cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto")
    label = {}
    for r in grid.to_dict("records"):
        txt = (f"{r['analytic_over_compiler']:.2f}" if r["status"] == "ok"
               else f"{r['needed_bytes'] / 1e9:.0f} GB")
        label[(r["point"], r[column])] = (f"x{r[prefix]}: " if prefix else "") + txt
    for i, p in enumerate(heat.index):
        for j, s in enumerate(heat.columns):
            if not np.isnan(heat.iloc[i, j]):
                txt = label[(p, s)] + (" ✗" if heat.iloc[i, j] >= 2 else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize=MIN_FONT_PT)
    ax.set_xticks(range(len(heat.columns)), heat.columns)
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=True, labelbottom=True)
    ax.set_yticks(range(len(heat.index)), heat.index)
    ax.grid(False)
    ax.set_xlabel(column + (f" (cell: x chips, then planner / {compiler} bytes)" if prefix else ""))
    return ax


# ---------------------------------------------------------------------------------------------
# The figure standard, checked on the drawn figure (matplotlib's own text extents), not on code.

def _texts(fig):
    """(what, Text) for every visible, non-empty text a reader sees in `fig`."""
    out = [("suptitle", fig._suptitle)] if fig._suptitle is not None else []
    for lg in fig.legends:
        out += [("legend", t) for t in lg.get_texts()]
    for ax in fig.axes:
        out += [("title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        out += [("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        for name, axis in (("xtick", ax.xaxis), ("ytick", ax.yaxis)):
            out += [(name, t) for t in _labels(axis) if _tick_shown(t, axis)]
        out += [("text", t) for t in ax.texts]
        if ax.get_legend() is not None:
            out += [("legend", t) for t in ax.get_legend().get_texts()]
    return [(w, t) for w, t in out if t is not None and t.get_visible() and t.get_text().strip()
            ]


def _tick_shown(t, axis) -> bool:
    """A tick label is drawn only when its tick lies inside the view interval."""
    lo, hi = sorted(axis.get_view_interval())
    v = t.get_position()[0 if axis.axis_name == "x" else 1]
    return lo - 1e-9 * abs(hi - lo) <= v <= hi + 1e-9 * abs(hi - lo)


def _labels(axis):
    return [t for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            for t in (tick.label1, tick.label2)]


def _categorical(shown) -> bool:
    """Tick labels that are names (a letter besides a number's 'e'), not numbers."""
    import re
    return any(re.search(r"[A-DF-Za-df-z]", t.get_text().replace(r"\mathdefault", ""))
               for t in shown)


def _data_points(ax):
    """Display coordinates of the plotted points (line vertices and scatter offsets)."""
    import numpy as np
    pts = [ln.get_transform().transform(ln.get_xydata()) for ln in ax.lines
           if ln.get_visible() and len(ln.get_xydata()) and ln.get_label() != "_nolegend_"
           and not _is_reference_line(ln)]
    pts += [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
            if isinstance(c, mpl.collections.PathCollection) and len(c.get_offsets())]
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def _is_reference_line(ln) -> bool:
    """axhline / axvline: drawn in axes coordinates along one direction."""
    xd, yd = ln.get_xdata(), ln.get_ydata()
    return len(xd) == 2 and (list(xd) == [0, 1] or list(yd) == [0, 1])


def _labelled_by_neighbour(fig, ax, which: str, ticks: bool = False) -> bool:
    """A grid of panels may label a shared scale once: another panel in the same row (for y) or
    column (for x), with the same limits, carries the label (`ticks`: the tick labels; panels
    side by side may share their y tick labels, stacked panels each show their x tick labels)."""
    box = ax.get_position()
    for other in fig.axes:
        if other is ax:
            continue
        axis = other.yaxis if which == "y" else other.xaxis
        if ticks:
            if len([t for t in _labels(axis) if t.get_visible() and t.get_text().strip()]) < 2:
                continue
        elif not (other.get_ylabel() if which == "y" else other.get_xlabel()).strip():
            continue
        ob = other.get_position()
        if which == "y" and other.get_ylim() == ax.get_ylim() and abs(ob.y0 - box.y0) < 0.02:
            return True
        if which == "x" and other.get_xlim() == ax.get_xlim() and abs(ob.x0 - box.x0) < 0.02:
            return True
    return False


def figure_problems(fig, *, min_overlap_px: float = 2.0) -> list[str]:
    """What keeps `fig` from the book's figure standard; empty when it meets it.

    Checks: the width is at most `MAX_WIDTH_IN`; no text is smaller than `MIN_FONT_PT`; no two
    texts overlap (tick labels, axis labels, titles, legend entries, annotations: their drawn
    extents intersect by more than `min_overlap_px` both ways; rotated tick labels of one axis
    are not compared with each other); every numeric axis of a panel that shows data has at
    least two labelled ticks and an axis label (a categorical axis needs its tick labels); no
    legend covers a plotted point. Units and rooflines are for the eye.
    """
    import numpy as np
    problems = []
    w, _ = fig.get_size_inches()
    if w > MAX_WIDTH_IN + 1e-6:
        problems.append(f"figure {w:.2f} in wide > {MAX_WIDTH_IN}")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    shown_w = fig.get_tightbbox(r).width   # inches: what the page shows (savefig.bbox "tight")
    if shown_w > MAX_WIDTH_IN + 0.05:
        problems.append(f"figure {shown_w:.2f} in wide as saved (labels outside it) > {MAX_WIDTH_IN}")
    texts = _texts(fig)
    for what, t in texts:
        if t.get_fontsize() < MIN_FONT_PT - 0.01:
            problems.append(f"{what} {t.get_text()!r} at {t.get_fontsize():.1f} pt < {MIN_FONT_PT}")
    # Text's own extent: an annotation's arrow is not its label
    boxes = [(what, t, mpl.text.Text.get_window_extent(t, r)) for what, t in texts]
    if boxes:   # every pair at once: a heatmap has hundreds of labels
        e = np.array([[b.x0, b.x1, b.y0, b.y1] for _, _, b in boxes])
        dx = np.minimum(e[:, None, 1], e[None, :, 1]) - np.maximum(e[:, None, 0], e[None, :, 0])
        dy = np.minimum(e[:, None, 3], e[None, :, 3]) - np.maximum(e[:, None, 2], e[None, :, 2])
        for i, j in zip(*np.nonzero(np.triu((dx > min_overlap_px) & (dy > min_overlap_px), k=1))):
            (wa, ta, _), (wb, tb, _) = boxes[i], boxes[j]
            if wa == wb and wa.endswith("tick") and (ta.get_rotation() or tb.get_rotation()):
                continue
            problems.append(f"{wa} {ta.get_text()!r} overlaps {wb} {tb.get_text()!r}")
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        colorbar = hasattr(ax, "_colorbar")
        has_data = bool(ax.lines or ax.collections or ax.patches or ax.images)
        if not has_data and not colorbar:
            continue
        name = ax.get_title() or f"panel {k}"
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if colorbar and not axis.get_major_ticks():
                continue
            shown = [t for t in _labels(axis) if t.get_visible() and t.get_text().strip()
                     and _tick_shown(t, axis)]
            if colorbar and axis is (ax.xaxis if ax.get_ylabel() else ax.yaxis) and not shown:
                continue
            if _categorical(shown) or not shown and not axis.get_major_ticks():
                if not shown:
                    problems.append(f"{name!r}: {axis.axis_name} axis has no tick labels")
                continue
            single = (ax.dataLim.width if axis.axis_name == "x" else ax.dataLim.height) == 0
            if len({t.get_text() for t in shown}) < (1 if single else 2) and not (
                    not shown and axis.axis_name == "y" and _labelled_by_neighbour(fig, ax, "y", ticks=True)):
                problems.append(f"{name!r}: {axis.axis_name} axis has {len(shown)} labelled tick(s)")
            if not label.strip() and not _labelled_by_neighbour(fig, ax, axis.axis_name):
                problems.append(f"{name!r}: {axis.axis_name} axis has no label")
        lg = ax.get_legend()
        if lg is not None and lg.get_visible():
            box = lg.get_window_extent(r)
            pts = _data_points(ax)
            inside = ((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1)
                      & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)) if len(pts) else np.array([])
            if inside.any():
                problems.append(f"{name!r}: the legend covers {int(inside.sum())} plotted point(s)")
    return problems


def check_figures() -> None:
    """Raises AssertionError naming every open figure that misses the standard (`figure_problems`).

    Installed in front of `plt.show` when `VISHWAMAI_CHECK_FIGURES` is set (the test run of the
    chapters sets it), so a chapter cell whose figure breaks the standard fails its test.
    """
    bad = {}
    for num in plt.get_fignums():
        fig = plt.figure(num)
        if p := figure_problems(fig):
            bad[fig.axes[0].get_title() if fig.axes else f"figure {num}"] = p
    if bad:
        plt.close("all")
        raise AssertionError(f"figures below the book's standard: {bad}")


def _checked_show(*args, **kwargs):
    check_figures()
    return _show(*args, **kwargs)


_show = plt.show
if os.environ.get("VISHWAMAI_CHECK_FIGURES"):
    plt.show = _checked_show
