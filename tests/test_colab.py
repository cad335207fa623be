"""The Colab path: one setting feeds the install cell, the launch and repository buttons; every
launch URL names a notebook that exists; the install check accepts this package and stops a
chapter, with one paragraph and nothing after it run, when `vishwamai` is another package."""
import json
import os
import pathlib

import papermill
import pytest
import yaml

import vishwamai
from tests import install_cell
from tests.test_notebooks import _toc_files

ROOT = install_cell.ROOT


def test_every_install_cell_is_rendered_from_the_settings():
    want = install_cell.render()
    for path in install_cell.chapters():
        cell = install_cell.install_cell(json.loads(path.read_text()))
        assert "".join(cell["source"]) == want, (
            f"{path.name}: install cell out of date; run `python -m tests.install_cell`")
        assert cell["metadata"].get("tags") == ["remove-cell"]


def test_the_cell_names_the_configured_repository_and_version():
    s = install_cell.settings()
    src = install_cell.render()
    assert f'"{s["url"]}", "{s["branch"]}", "{s["version"]}"' in src
    assert s["version"] == vishwamai.__version__
    assert install_cell.API_MARKER == vishwamai.BOOK_API
    other = install_cell.render(url="https://example.org/fork", branch="dev")
    assert '"https://example.org/fork", "dev"' in other and s["url"] not in other


def _colab_url(cfg, file):
    """The rocket button's target, as sphinx-book-theme builds it from `repository`."""
    repo = cfg["repository"]
    org_repo = repo["url"].removeprefix("https://github.com/").strip("/")
    rel = (repo.get("path_to_book") or "").strip("/")
    rel = f"{rel}/" if rel else ""
    return (f"{cfg['launch_buttons']['colab_url']}/github/{org_repo}/blob/"
            f"{repo.get('branch', 'main')}/{rel}{file}.ipynb")


def test_every_colab_url_points_at_a_notebook_in_the_tree():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["html"]["use_repository_button"] and cfg["launch_buttons"]["colab_url"]
    chapters = [f for f in _toc_files() if (ROOT / f).with_suffix(".ipynb").exists()]
    assert len(chapters) >= 8
    for f in chapters:
        url = _colab_url(cfg, f)
        rel = url.split(f"/blob/{cfg['repository']['branch']}/", 1)[1]
        assert (ROOT / rel).is_file(), url


@pytest.mark.notebook
def test_a_fake_vishwamai_stops_the_chapter_at_the_install_cell(tmp_path, monkeypatch):
    fake = tmp_path / "fake" / "vishwamai"
    fake.mkdir(parents=True)
    # The public package of the same name: version 0.1.0 too, none of this book's API.
    (fake / "__init__.py").write_text('__version__ = "0.1.0"\n')
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(install_cell.BOOK / "01_configurations.ipynb"), str(out),
                                   kernel_name="python3", cwd=str(install_cell.BOOK),
                                   progress_bar=False)
    assert info.value.ename == "WrongPackage"
    msg = info.value.evalue
    assert "repository.url" in msg and "VISHWAMAI_PACKAGE" in msg and "\n" not in msg
    assert info.value.traceback == [msg]                     # one paragraph, no traceback
    nb = json.loads(out.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    first = code.index(next(c for c in code if c["outputs"]))
    assert all(not c["outputs"] and c["execution_count"] is None for c in code[first + 1:])


@pytest.mark.skipif(not os.environ.get("VISHWAMAI_COLAB_WHEEL"),
                    reason="only under `make colab-check`")
def test_colab_check_imports_the_installed_wheel():
    """Under `make colab-check` the package comes from the wheel, not from a source tree."""
    path = pathlib.Path(vishwamai.__file__).resolve()
    assert "site-packages" in path.parts, path
    assert not (path.parents[1] / "pyproject.toml").exists()
