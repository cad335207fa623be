"""Root pytest configuration: the book's chapters run as tests, cell by cell, under nbval.

`make test` runs `pytest --nbval-lax --nbval-current-env --dist loadfile tests book`. With
`--nbval-lax`, this file first parametrises each chapter with papermill (its `parameters` cell
followed by an injected cell holding `tests/test_notebooks.py:CI_PARAMETERS`) into
`book/.ci-<name>.ipynb`, beside the original so relative paths still resolve, and nbval executes
those copies cell by cell in a fresh kernel per chapter: a cell that raises fails its test
(outputs are compared only in cells tagged `nbval-check-output`). Only the copies are collected
(never an original chapter, nor a notebook outside `book/` such as a build's); with
`--dist loadfile` all cells of one chapter run on one xdist worker, in order. The copies are
made once, by the controlling process, and removed when the session ends. When a chapter's
last cell has run, its glued values are recorded (`tests/glue_values.record`, under
`_build/glue/<tree>`) and checked against every page recorded for the same tree: one quantity,
one value (a conflict fails that last cell's teardown; `tests/test_glue.py` reads the records).

One chapter: `pytest --nbval-lax --nbval-current-env -n 0 book -k 01_configurations`.

Under `make colab-check` (`VISHWAMAI_COLAB_WHEEL` set) the kernels run as on Colab: a stand-in
`google.colab` package on their PYTHONPATH and `VISHWAMAI_PACKAGE` pointing at the wheel, so
each chapter's install cell installs the wheel.
"""
import os
import pathlib
import shutil
import tempfile

import pytest

BOOK = pathlib.Path(__file__).resolve().parent / "book"
PREFIX = ".ci-"


def _nbval(config) -> bool:
    return bool(config.getoption("nbval_lax", default=False)
                or config.getoption("nbval", default=False))


def _controller(config) -> bool:
    return not hasattr(config, "workerinput")


def _as_on_colab(config, wheel: str) -> None:
    """The kernels' environment under `make colab-check` (inherited from this process)."""
    stub_root = tempfile.mkdtemp(prefix="colab-stub-")
    stub = pathlib.Path(stub_root) / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stands in for Colab\'s module: the chapters only test for it."""\n')
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (stub_root, os.environ.get("PYTHONPATH")) if p)
    os.environ["VISHWAMAI_PACKAGE"] = pathlib.Path(wheel).resolve().as_uri()
    config._colab_stub = stub_root


def pytest_configure(config):
    if (_controller(config) and config.getoption("dist", "no") == "loadfile"
            and config.getoption("numprocesses", None)):
        from tests.scheduling import Recorder

        config.pluginmanager.register(Recorder(), "test-seconds")
    if not _nbval(config):
        return
    # Each chapter's kernel holds its figures to the book's standard at plt.show
    # (vishwamai.plotting.check_figures; tests/test_figures.py).
    os.environ.setdefault("VISHWAMAI_CHECK_FIGURES", "1")
    if _controller(config):
        from tests.test_notebooks import prepare_ci_copies

        prepare_ci_copies(BOOK, BOOK, prefix=PREFIX)
    wheel = os.environ.get("VISHWAMAI_COLAB_WHEEL")
    if wheel:
        _as_on_colab(config, wheel)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` hands out the longest files first (tests/scheduling.py)."""
    if config.getoption("dist") != "loadfile":
        return None
    from tests.scheduling import HeaviestFirst

    return HeaviestFirst(config, log)


def pytest_unconfigure(config):
    if getattr(config, "_colab_stub", None):
        shutil.rmtree(config._colab_stub, ignore_errors=True)
    if _nbval(config) and _controller(config):
        for copy in BOOK.glob(PREFIX + "*.ipynb"):
            copy.unlink(missing_ok=True)


def pytest_runtest_teardown(item, nextitem):
    """After a chapter's last cell: record its glue and compare it with the other pages'."""
    outputs = getattr(item, "test_outputs", None)
    if outputs is None or not item.path.name.startswith(PREFIX):
        return
    cells = item.session.__dict__.setdefault("_chapter_outputs", {}).setdefault(item.path, [])
    cells.append({"cell_type": "code", "outputs": list(outputs)})
    if nextitem is not None and nextitem.path == item.path:
        return
    from tests.glue_values import conflicts, record
    from tests.test_notebooks import GLUE_RECORDS

    page = item.path.name.removeprefix(PREFIX).removesuffix(".ipynb")
    pages = record(GLUE_RECORDS, page, {"cells": item.session._chapter_outputs.pop(item.path)})
    assert not conflicts(pages), conflicts(pages)


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb":
        return not (collection_path.parent == BOOK and collection_path.name.startswith(PREFIX))
    return None
