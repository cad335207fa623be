"""Table headers break at their separators, never inside a name.

The chapters' tables (pandas Stylers) name columns after the package's keys (`bytes_accessed`,
`tinyllama_1_1b`, `tokens/s/chip`). A browser breaks a header only at spaces, so such a name
either widens its column or, with `overflow-wrap: anywhere`, breaks mid-word ("tenso r"). This
extension puts a break opportunity (`<wbr>`) after each `_` and `/` in the text of every `<th>`
of a page, and `custom.css` lets headers break nowhere else.
"""
from __future__ import annotations

import re

_TH = re.compile(r"(<th\b[^>]*>)(.*?)(</th>)", re.S)
_TAG = re.compile(r"(<[^>]*>)")


def break_opportunities(html: str) -> str:
    """`html` with `<wbr>` after every `_` and `/` in `<th>` text (never inside a tag)."""
    def th(m):
        parts = _TAG.split(m.group(2))
        parts = [p if p.startswith("<") else re.sub(r"([_/])(?=\w)", r"\1<wbr>", p) for p in parts]
        return m.group(1) + "".join(parts) + m.group(3)
    return _TH.sub(th, html)


def _page(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = break_opportunities(context["body"])


def setup(app):
    app.connect("html-page-context", _page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
