"""Every chapter: stored without outputs, parametrised for papermill, with CI-sized parameters.

The chapters are executed by nbval, cell by cell, not here: `make test` passes `--nbval-lax`,
and the root conftest.py has papermill inject the CI parameters below into copies of the
chapters (`prepare_ci_copies`) that nbval runs, so each chapter runs once per `make test`.
These tests check the stored chapters and the prepared copies.
"""
import json
import pathlib
import re

import nbformat
import papermill
import pytest
import yaml


ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
GLUE_RECORDS = ROOT / "_build" / "glue"      # each executed chapter's glue (root conftest.py)
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


def prepare_ci_copies(book: pathlib.Path, dest: pathlib.Path, *, prefix: str = ".ci-") -> list:
    """Writes `dest/<prefix><chapter>` for every chapter in `book`: the chapter with its CI
    parameters injected by papermill after the `parameters` cell (nothing is executed); removes
    older copies first. Returns the paths written."""
    for old in dest.glob(prefix + "*.ipynb"):
        old.unlink()
    written = []
    for src in sorted(p for p in book.glob("*.ipynb") if not p.name.startswith(".")):
        out = dest / (prefix + src.name)
        papermill.execute_notebook(str(src), str(out), parameters=CI_PARAMETERS.get(src.name, {}),
                                   prepare_only=True, kernel_name="python3", progress_bar=False)
        written.append(out)
    return written


def test_the_ci_copies_carry_the_ci_parameters(tmp_path):
    """What nbval executes: each chapter's cells, in order, with one injected cell (where the
    chapter has CI parameters) right after the `parameters` cell, setting exactly those."""
    copies = prepare_ci_copies(BOOK, tmp_path)
    assert [c.name for c in copies] == [".ci-" + name for name in CHAPTERS]
    for copy, name in zip(copies, CHAPTERS):
        cells = json.loads(copy.read_text())["cells"]
        original = json.loads((BOOK / name).read_text())["cells"]
        injected = [i for i, c in enumerate(cells)
                    if "injected-parameters" in c["metadata"].get("tags", [])]
        params = CI_PARAMETERS[name]
        assert len(injected) == (1 if params else 0), name
        rest = [c for c in cells if "injected-parameters" not in c["metadata"].get("tags", [])]
        assert ["".join(c["source"]) for c in rest] == ["".join(c["source"]) for c in original]
        if params:
            i = injected[0]
            assert "parameters" in cells[i - 1]["metadata"].get("tags", []), name
            namespace = {}
            exec("".join(cells[i]["source"]), namespace)
            assert {k: namespace[k] for k in params} == params, name
