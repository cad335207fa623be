"""MathJax from the installed `sphinx-mathjax-offline` wheel: the HTML renders math without a network.

The wheel (pinned in requirements.txt) ships MathJax 3's `tex-chtml.js` with its fonts; its own
extension cannot be named in a config (its package directory has a hyphen), so this one finds the
files through the distribution's record and copies them into `_static/mathjax` when the build
finishes; `_config.yml` sets `mathjax_path: mathjax/tex-chtml.js` (relative to `_static`).
"""
from __future__ import annotations

import pathlib
from importlib import metadata

from sphinx.util.fileutil import copy_asset

DIST = "sphinx-mathjax-offline"
ENTRY = "mathjax/tex-chtml.js"


def mathjax_dir() -> pathlib.Path:
    """The installed wheel's `static/mathjax` folder (raises if the wheel is missing)."""
    dist = metadata.distribution(DIST)
    for f in dist.files or ():
        if str(f).endswith("static/" + ENTRY):
            return pathlib.Path(dist.locate_file(f)).parent
    raise FileNotFoundError(f"{DIST} is installed but ships no static/{ENTRY}")


def _config(app, config):
    mathjax_dir()  # fail the build early, by name, if the files are not there
    if config.mathjax_path != ENTRY:
        raise ValueError(f"mathjax_path is {config.mathjax_path!r}; the offline copy is {ENTRY!r}")


def _copy(app, exc):
    if exc is None and app.builder.format == "html":
        copy_asset(str(mathjax_dir()), str(pathlib.Path(app.outdir) / "_static" / "mathjax"))


def setup(app):
    app.connect("config-inited", _config, priority=900)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
