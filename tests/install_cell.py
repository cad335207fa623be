"""The first (hidden) cell of every chapter: on Colab it installs this book's package; everywhere
it checks that the `vishwamai` it imports is this book's, and stops with one paragraph if not.

The cell is generated from `_config.yml` (repository url and branch: the same setting the launch
and repository buttons use) and the package version, so there is one place to change:

    python -m tests.install_cell        # rewrite every chapter's install cell from the settings

`tests/test_colab.py` fails when a chapter's cell differs from what this renders.
"""
from __future__ import annotations

import json
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
API_MARKER = "vishwamai-book/1"  # = vishwamai.BOOK_API; bump both when a chapter needs new API

TEMPLATE = '''\
# Colab: install this book's package (Colab keeps its own JAX), then check it is the right one.
# To install from elsewhere (a fork, a wheel), set VISHWAMAI_PACKAGE to a pip requirement.
import os, sys
REPOSITORY, BRANCH, VERSION = "{url}", "{branch}", "{version}"
PACKAGE = os.environ.get("VISHWAMAI_PACKAGE", f"vishwamai @ git+{{REPOSITORY}}@{{BRANCH}}")
if "google.colab" in sys.modules:
    %pip install -q "{{PACKAGE}}"


class WrongPackage(Exception):
    def _render_traceback_(self):  # IPython shows this paragraph instead of a traceback
        return [str(self)]


try:
    import vishwamai
    found = (getattr(vishwamai, "__version__", None), getattr(vishwamai, "BOOK_API", None))
except ImportError:
    found = (None, None)
if found != (VERSION, "{api}"):
    raise WrongPackage(
        f"This chapter needs the vishwamai package of this book (version {{VERSION}}, "
        f"{{'{api}'}}), to be installed from {{PACKAGE}}; the vishwamai found here "
        f"(version {{found[0]}}, API {{found[1]}}) is another package. The book's repository is "
        f"the setting repository.url / repository.branch in its _config.yml; to install from "
        f"elsewhere, set the environment variable VISHWAMAI_PACKAGE to a pip requirement, e.g. "
        f"'vishwamai @ git+https://github.com/<you>/VishwamAI@main', and run this cell again.")'''


def settings() -> dict:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                        re.M).group(1)
    return {"url": cfg["repository"]["url"], "branch": cfg["repository"].get("branch", "main"),
            "version": version, "api": API_MARKER}


def render(**overrides) -> str:
    return TEMPLATE.format(**{**settings(), **overrides})


def chapters() -> list[pathlib.Path]:
    return sorted(p for p in BOOK.glob("*.ipynb") if not p.name.startswith("."))


def install_cell(nb: dict) -> dict:
    """The first code cell of a notebook (JSON dict)."""
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


def sync() -> list[str]:
    """Rewrites every chapter's install cell; returns the chapters that changed."""
    changed = []
    src = render()
    for path in chapters():
        nb = json.loads(path.read_text())
        cell = install_cell(nb)
        if "".join(cell["source"]) == src:
            continue
        cell["source"] = src.splitlines(keepends=True)
        cell["metadata"] = {"tags": ["remove-cell"]}
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        changed.append(path.name)
    return changed


if __name__ == "__main__":
    print("rewrote:", sync() or "nothing")
