"""One quantity, one value: the glued values of all pages, read from executed chapters.

The root conftest.py records each chapter nbval executes (`glue_values.record`) and fails
when a name it glues already holds another value on a page executed from the same tree.
Here: the reader and the comparison, on notebooks built to disagree, and every page recorded
so far (from `make test`, or `make book`'s executed copies in `_build/jupyter_execute`)."""
import json
import pathlib

import pytest

from tests.glue_values import conflicts, glued, tree_stamp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _nb(values: dict) -> dict:
    outs = [{"output_type": "display_data", "metadata": {"scrapbook": {
        "name": k, "mime_prefix": "application/papermill.record/"}},
        "data": {"application/papermill.record/text/plain": repr(v)}} for k, v in values.items()]
    return {"cells": [{"cell_type": "code", "outputs": outs}]}


def test_reader_and_conflicts():
    a, b = glued(_nb({"peak": "171.7", "n": "3"})), glued(_nb({"peak": "99.9", "n": "3"}))
    assert a == {"peak": "171.7", "n": "3"}
    assert conflicts({"05": a, "06": b}) == ["peak: 05 -> '171.7', 06 -> '99.9'"]
    assert conflicts({"05": a, "06": a}) == []
    with pytest.raises(ValueError, match="two values in one page"):
        nb = _nb({"x": "1"})
        nb["cells"].append(_nb({"x": "2"})["cells"][0])
        glued(nb)


def test_all_recorded_pages_agree():
    pages = {}
    d = ROOT / "_build" / "glue" / tree_stamp()
    for p in sorted(d.glob("*.json")):
        pages[p.stem] = json.loads(p.read_text())
    for p in sorted((ROOT / "_build" / "jupyter_execute").rglob("*.ipynb")):
        pages.setdefault(p.stem, glued(json.loads(p.read_text())))
    if not pages:
        pytest.skip("no executed chapters of this tree yet (the notebook tests record them)")
    assert not conflicts(pages), conflicts(pages)
