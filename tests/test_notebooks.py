"""Every chapter: stored without outputs, parametrised for papermill, executed with CI sizes.

`make test` also runs nbval-lax over the same chapters (see the root conftest.py), with the
CI parameters below injected by papermill.
"""
import json
import os
import pathlib
import re

import nbformat
import papermill
import pytest
import yaml

from tests.glue_values import conflicts, record

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
GLUE_RECORDS = ROOT / "_build" / "glue"
CHAPTERS = sorted(p.name for p in BOOK.glob("*.ipynb") if not p.name.startswith("."))

# Parameters that make each chapter CI-sized (2 CPU cores); a chapter not listed runs with its
# own defaults, which are already CPU-small.
CI_PARAMETERS = {
    "01_configurations.ipynb": {"seq_len": 16, "new_tokens": 8},
    "02_architecture.ipynb": {},
    "03_tpu_optimizations.ipynb": {},
    "03b_fp8.ipynb": {},
    "03c_sharding.ipynb": {"preset": "tiny", "seq_len": 32},
    "04_memory.ipynb": {},
    "05_performance.ipynb": {"preset": "tiny", "sweep_batches": [1, 4], "seq_len": 64,
                             "sweep_seq_len": 64, "repeats": 2, "headline_repeats": 1},
    "06_serving.ipynb": {"preset": "tiny", "batches": [1], "prompt_len": 16, "contexts": [16],
                         "new_tokens": 8, "repeats": 2, "full_calculator": False},
    "appendix_errata.ipynb": {},
    "appendix_hardware.ipynb": {},
}


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries:
            files.append(e["file"])
            walk(e.get("sections", []))

    for part in toc.get("parts", []):
        walk(part["chapters"])
    return files


def test_every_chapter_is_in_the_toc_and_has_ci_parameters():
    listed = {f.split("/")[-1] for f in _toc_files()}
    for name in CHAPTERS:
        assert name.removesuffix(".ipynb") in listed, f"{name} is not in _toc.yml"
        assert name in CI_PARAMETERS, f"{name} has no CI_PARAMETERS entry"
    for f in _toc_files():
        path = ROOT / f
        assert path.with_suffix(".ipynb").exists() or path.with_suffix(".md").exists(), f


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_structure(name):
    nb = nbformat.read(BOOK / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "stored with outputs: strip them"
    assert all(c.get("execution_count") is None for c in code), "stored with execution counts"
    raw = json.loads((BOOK / name).read_text())
    assert all("id" in c for c in raw["cells"]), "a cell without an id (nbformat 4.5 needs one)"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    visible = [c for c in code if "remove-cell" not in c.metadata.get("tags", [])]
    assert re.search(r"^\s*(import vishwamai|from vishwamai)", visible[0].source, re.M), \
        "the first code cell imports vishwamai"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), \
        "a chapter opens with its title"
    params = {k: v for k, v in CI_PARAMETERS.get(name, {}).items()}
    for key in params:
        assert re.search(rf"^{key}\s*=", tagged[0].source, re.M), f"CI parameter {key} is not a parameter"


# Set by `make colab-check`: the chapters run as Colab runs them, `google.colab` importable and
# the install cell pointed at the wheel built from this tree (VISHWAMAI_PACKAGE).
COLAB_WHEEL = os.environ.get("VISHWAMAI_COLAB_WHEEL")


def _as_on_colab(tmp_path, monkeypatch):
    stub = tmp_path / "colab_stub" / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stands in for Colab\'s module: the chapters only test for it."""\n')
    path = os.pathsep.join(p for p in (str(stub.parents[1]), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("VISHWAMAI_PACKAGE", pathlib.Path(COLAB_WHEEL).resolve().as_uri())


@pytest.mark.notebook
@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_executes_with_ci_parameters(name, tmp_path, monkeypatch):
    if COLAB_WHEEL:
        _as_on_colab(tmp_path, monkeypatch)
    out = tmp_path / name
    papermill.execute_notebook(
        str(BOOK / name), str(out), parameters=CI_PARAMETERS.get(name, {}),
        kernel_name="python3", cwd=str(BOOK), progress_bar=False)
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == (1 if CI_PARAMETERS.get(name) else 0)
    produced = sum(len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
    assert produced > 0, "the chapter printed nothing"
    # One quantity, one value: this page's glue against every page executed before it (in this
    # run or an earlier one of this tree); tests/test_glue.py reads the same records.
    pages = record(GLUE_RECORDS, name.removesuffix(".ipynb"), nb)
    assert not conflicts(pages), conflicts(pages)
