"""The book's figure standard (vishwamai.plotting.figure_problems) on figures drawn here.

Every chapter figure is held to it too: the chapters' test run sets VISHWAMAI_CHECK_FIGURES
(conftest.py), which puts `plotting.check_figures` in front of `plt.show`, so a chapter cell
whose figure has overlapping labels, an unlabelled axis or a legend over its data fails.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vishwamai import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def good():
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([1, 2, 4, 8], [1, 3, 2, 5], "o-", label="runs")
    ax.set(xlabel="batch (sequences)", ylabel="tokens/s", xscale="log")
    ax.legend(loc="upper left")
    return fig, ax


def test_a_clean_figure_passes():
    fig, _ = good()
    assert plotting.figure_problems(fig) == []


def test_overlapping_labels_are_found():
    fig, ax = good()
    ax.text(2, 3, "tpu_v5e ridge 241", fontsize=10)
    ax.text(2.05, 3.02, "h100 ridge 295", fontsize=10)
    assert any("overlaps" in p for p in plotting.figure_problems(fig))


def test_small_fonts_and_wide_figures_are_found():
    fig, ax = good()
    fig.set_size_inches(13, 4)
    ax.tick_params(labelsize=7)
    p = plotting.figure_problems(fig)
    assert any("wide" in x for x in p) and any("pt <" in x for x in p)


def test_an_axis_without_label_or_with_one_tick_is_found():
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    x = np.array([1, 4, 16, 64])
    a1.plot(x, [900, 1000, 1010, 1020], "o-")
    a1.set(xscale="log", ylabel="tokens/s")
    a1.set_yticks([1000])
    a2.plot(x, x, "o-")
    a2.set(xscale="log", xlabel="batch", ylabel="")
    p = plotting.figure_problems(fig)
    assert any("panel 0" in x and "x axis" in x for x in p), p    # shared x: no labels on top
    assert any("y axis has 1 labelled" in x or "y axis has 0" in x for x in p), p
    assert any("panel 1" in x and "no label" in x for x in p), p


def test_a_legend_over_the_data_is_found():
    fig, ax = good()
    ax.get_legend().remove()
    ax.scatter([1.05], [4.9])
    ax.legend(["runs", "point"], loc="upper left", fontsize=10)
    ax.scatter([1.2], [4.6], label="hidden")
    assert any("legend covers" in x for x in plotting.figure_problems(fig))


def test_categorical_axes_need_tick_labels_not_an_axis_label():
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([0, 1], [3, 4])
    ax.set_yticks([0, 1], ["forward", "train step"])
    ax.set_xlabel("tokens/s")
    assert plotting.figure_problems(fig) == []


def _grid():
    rows = []
    for i, (gen, chips) in enumerate([("v4", 4), ("v5e", 16), ("v5p", 64), ("v6e", 256)] * 3):
        rows.append({"point": f"tinyllama_1_1b train fsdp B={4 * (i // 4 + 1)}", "generation": gen,
                     "chips": chips, "slice": f"{gen} x{chips}", "analytic_fits": i % 3 != 0,
                     "status": "ok" if i % 5 else "oom", "analytic_over_compiler": 1.01,
                     "needed_bytes": 2e10})
    return pd.DataFrame(rows)


def test_the_verdict_heatmap_meets_the_standard():
    ax = plotting.verdict_heatmap(_grid(), compiler="XLA:TPU", column="generation", prefix="chips")
    assert plotting.figure_problems(ax.figure) == []
    assert [t.label1.get_text() for t in ax.xaxis.get_major_ticks()] == ["v4", "v5e", "v5p", "v6e"]
    assert all(t.label2.get_visible() for t in ax.xaxis.get_major_ticks())   # names above too


def test_level_labels_never_overlap():
    fig, ax = good()
    ax.set_yscale("log")
    plotting.label_levels(ax, {"tpu_v5p ridge": 166, "tpu_v5e ridge": 241, "h100 ridge": 295,
                               "tpu_v6e ridge": 560}, fmt="{name} {value:,.0f}")
    assert not [p for p in plotting.figure_problems(fig) if "overlaps" in p]


def test_check_figures_raises_naming_the_figure():
    fig, ax = good()
    ax.set_title("bad one")
    ax.set_ylabel("")
    with pytest.raises(AssertionError, match="bad one"):
        plotting.check_figures()


def test_table_headers_break_only_at_separators():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "book/_ext/table_headers.py"
    spec = importlib.util.spec_from_file_location("table_headers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    html = ('<th class="col_heading level0">tinyllama_1_1b</th><td>a_b</td>'
            '<th id="x_y"><span class="a_b">tokens/s/chip</span></th>')
    out = mod.break_opportunities(html)
    assert "tinyllama_<wbr>1_<wbr>1b" in out and "tokens/<wbr>s/<wbr>chip" in out
    assert '<td>a_b</td>' in out and 'id="x_y"' in out and 'class="a_b"' in out   # tags untouched


def test_buffer_shapes_are_cut_between_shapes():
    from vishwamai.benchmarks.tpu_buffers import _whole_shapes
    s = "bf16[1,1024,32,128], bf16[1,2048,2,11008], bf16[2048,2,11008], f32[1024,32000], f32[32,2048,128]"
    out = _whole_shapes(s, width=70)
    assert out == "bf16[1,1024,32,128], bf16[1,2048,2,11008], bf16[2048,2,11008], +2 more"
    assert _whole_shapes("f32[4096,32000]") == "f32[4096,32000]"


def test_a_row_of_panels_may_label_its_shared_scale_once():
    fig, axes = plt.subplots(1, 2, figsize=(7, 3), sharey=True)
    for ax in axes:
        ax.plot([0, 1, 2], [0, 1, 4])
        ax.set_xlabel("key position")
    axes[0].set_ylabel("query position")
    assert plotting.figure_problems(fig) == []
    axes[0].set_ylabel("")
    assert any("y axis has no label" in p for p in plotting.figure_problems(fig))


def test_every_chapter_figure_goes_through_plt_show():
    """The figure check runs at plt.show (conftest.py): a cell that draws must call it."""
    import json
    import pathlib
    book = pathlib.Path(__file__).resolve().parents[1] / "book"
    missing = []
    for path in sorted(book.glob("[!.]*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and ("subplots(" in src or "plt.figure(" in src) \
                    and "plt.show()" not in src:
                missing.append(f"{path.name} {cell.get('id')}")
    assert not missing, missing


def test_one_value_needs_only_one_tick():
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([4], [120.0], "o")
    ax.set_xticks([4], ["4"])
    ax.set(xlabel="batch (sequences)", ylabel="tokens/s")
    assert not [p for p in plotting.figure_problems(fig) if "x axis" in p]
