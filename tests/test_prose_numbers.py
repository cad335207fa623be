"""No typed numbers in the book's prose: every digit in a chapter's markdown is glued from the cell
that computed it, or sits in math, code, a link target, or a phrase of the allowlist.

What is left of a markdown text after removing those is searched for digits; each one found is a
number a reader could see contradicted by the output next to it. The allowlist
(`tests/prose_allowlist.txt`, one regular expression a line, each with its reason) holds the
definitional constants: names that contain digits (presets, chips, dtypes) and chapter numbers.
The design notebook's appendix page is its author's text, reproduced as written, and is exempt.
"""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ALLOWLIST = pathlib.Path(__file__).with_name("prose_allowlist.txt")
EXEMPT = {"appendix_design_notebook.md"}  # the original design notes, verbatim


def _allowlist() -> list[re.Pattern]:
    pats = []
    for line in ALLOWLIST.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, sep, reason = line.partition("  # ")
        assert sep and reason.strip(), f"allowlist entry without a reason: {line!r}"
        pats.append(re.compile(pattern.strip()))
    return pats


def _strip_fences(text: str) -> str:
    """Drops code blocks and {math}/{glue} directives; keeps the prose inside other directives."""
    out, stack = [], []  # stack of (fence, keep_body)
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,}|:{3,})\s*(\{[^}]*\})?", line)
        if m and stack and line.strip() == stack[-1][0]:
            stack.pop()
        elif m and (not stack or stack[-1][1]):
            name = m.group(2) or ""
            code = name in ("", "{code-cell}", "{code-block}", "{code}", "{math}") or name.startswith("{glue")
            stack.append((m.group(1), not code))
        elif stack and (not stack[-1][1] or re.match(r"^\s*:[\w-]+:", line)):
            pass  # code, math, or a directive option line such as :class: dropdown
        else:
            out.append(line)
            continue
        out.append("")
    return "\n".join(out)


_INLINE = [
    (re.compile(r"\$\$.*?\$\$", re.S), " "),                    # display math
    (re.compile(r"(?<![\\$])\$(?!\s)[^$\n]+?(?<!\s)\$"), " "),  # inline math
    (re.compile(r"\{[\w:.-]+\}`[^`]*`"), " "),                  # roles: glue, math, func, ...
    (re.compile(r"(`+)[^`].*?\1", re.S), " "),                  # inline code
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),            # [text](target): keep the text
    (re.compile(r"<[^>\n]*>"), " "),                            # html tags, autolinks
    (re.compile(r"https?://\S+"), " "),                         # bare urls
    (re.compile(r"^\(\S+\)=\s*$", re.M), " "),                  # (label)=
    (re.compile(r"^\s*(\d+\.|[-*])\s", re.M), " "),             # list markers "1. "
]


def leftover_digits(markdown: str, allow: list[re.Pattern]) -> list[str]:
    """The snippets of `markdown` that hold a digit outside glue, math, code, links, allowlist."""
    text = _strip_fences(markdown)
    for pat, repl in _INLINE:
        text = pat.sub(repl, text)
    for pat in allow:
        text = pat.sub(" ", text)
    return [re.sub(r"\s+", " ", text[max(0, m.start() - 30):m.end() + 10])
            for m in re.finditer(r"\d(?:[\d,.]*\d)?", text)]


def _pages():
    for path in sorted(BOOK.glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        nb = json.loads(path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{path.name} cell {i}", "".join(cell["source"])
    for path in sorted(BOOK.glob("*.md")):
        if path.name not in EXEMPT:
            yield path.name, path.read_text()


PAGES = list(_pages())


@pytest.mark.parametrize("where,markdown", PAGES, ids=[w for w, _ in PAGES])
def test_no_typed_number_in_the_prose(where, markdown):
    found = leftover_digits(markdown, _allowlist())
    assert not found, (f"{where}: numbers typed into the prose (glue them from the cell that "
                       f"computes them, or put them in math/code): {found}")


def test_the_lint_finds_typed_numbers():
    allow = _allowlist()
    bad = ("The sparse pattern has density 0.34 at $T = 16$.\n\n"
           "```{admonition} Answer\n:class: dropdown\nIt is 3.4x faster.\n```\n")
    found = leftover_digits(bad, allow)
    assert any("0.34" in f for f in found) and any("3.4x" in f for f in found), found
    assert len(found) == 2  # the 16 is in math


def test_the_lint_passes_glue_math_code_links_and_the_allowlist():
    allow = _allowlist()
    good = ("Density {glue:text}`density` at $T = 16$, `block_q = 128`, $$x^2$$, "
            "[chapter](04_memory.ipynb), <https://example.org/v1>, {math}`2^{10}`, "
            "llama2_7b in bf16 on a v5e, as Chapter 4 shows.\n\n"
            "```python\nx = 1024\n```\n\n1. first item\n")
    assert leftover_digits(good, allow) == []


def test_the_allowlist_is_short():
    assert len(_allowlist()) <= 30, "the allowlist is for definitional constants only"


# Figures: at most MAX_WIDTH_IN wide (shown at their own size in the text column) and no font
# below MIN_FONT_PT, so the rendered text of a plot is never smaller than 10 pt. The planner-vs-
# compiler heatmap of chapter 4 draws one label per compiled point and is sized by its own cell.
FIGURE_EXEMPT = ("Planner vs XLA:TPU per chip",)


def _code_cells():
    for path in sorted(BOOK.glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and not any(m in src for m in FIGURE_EXEMPT):
                yield f"{path.name} cell {i}", src


def figure_problems(src: str) -> list[str]:
    from vishwamai.plotting import MAX_WIDTH_IN, MIN_FONT_PT

    bad = [f"figsize width {m.group(1)} > {MAX_WIDTH_IN}"
           for m in re.finditer(r"figsize=\(\s*([\d.]+)\s*(?:\*[^,]*)?,", src)
           if float(m.group(1)) > MAX_WIDTH_IN or "*" in m.group(0)]
    bad += [f"fontsize={m.group(1)} < {MIN_FONT_PT}"
            for m in re.finditer(r"fontsize=(\d+)", src) if int(m.group(1)) < MIN_FONT_PT]
    return bad


def test_figures_are_narrow_enough_and_fonts_large_enough():
    problems = {where: p for where, src in _code_cells() if (p := figure_problems(src))}
    assert not problems, problems


def test_the_figure_check_can_fail():
    assert figure_problems("plt.subplots(1, 4, figsize=(12, 3.4)); ax.text(0, 0, 's', fontsize=8)")
    assert not figure_problems("plt.subplots(2, 1, figsize=(7.5, 7)); ax.legend(fontsize=10)")


def test_prose_formats_numbers_one_way():
    from vishwamai import prose

    assert prose.count(1048576) == "1,048,576"
    assert prose.short(109_529_088, 0) == "110M" and prose.short(1.5e9) == "1.5B"
    assert prose.short(50257, 0) == "50k" and prose.kib_count(32768) == "32k"
    assert prose.pct(0.147, 1) == "14.7%" and prose.times(3.12, 2) == "3.12×"
    assert prose.span(3.123, 3.838) == "3.12–3.84" and prose.span(2, 2, prose.count) == "2"
    prose.glue("t_float", 6144.0)
    assert prose.GLUED["t_float"] == "6,144"
    with pytest.raises(TypeError, match="pass fmt="):
        prose.glue("t_bad", 0.34)


def test_a_false_claim_stops_the_chapter():
    from vishwamai import prose

    prose.claim("t_claim", False, "faster", "slower")
    assert prose.GLUED["t_claim"] == "slower"
    with pytest.raises(AssertionError, match="faster"):
        prose.claim("t_claim2", False, "faster")
