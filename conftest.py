"""Root pytest configuration: nbval-lax collects the book's chapters with CI parameters.

With `--nbval-lax`, each chapter is first parametrised by papermill (its `parameters` cell
followed by an injected cell holding `tests/test_notebooks.py:CI_PARAMETERS`) into
`book/.ci-<name>.ipynb`, beside the original so relative paths still resolve; nbval then
executes those copies cell by cell. The unparametrised originals are not collected.
"""
import pathlib

BOOK = pathlib.Path(__file__).resolve().parent / "book"
PREFIX = ".ci-"


def _prepare_chapters():
    import papermill

    from tests.test_notebooks import CI_PARAMETERS

    for old in BOOK.glob(PREFIX + "*.ipynb"):
        old.unlink()
    for src in sorted(p for p in BOOK.glob("*.ipynb") if not p.name.startswith(".")):
        papermill.execute_notebook(str(src), str(BOOK / (PREFIX + src.name)),
                                   parameters=CI_PARAMETERS.get(src.name, {}),
                                   prepare_only=True, kernel_name="python3", progress_bar=False)


def pytest_configure(config):
    if config.getoption("nbval_lax", default=False) and not hasattr(config, "workerinput"):
        _prepare_chapters()


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb" and collection_path.parent == BOOK:
        return not collection_path.name.startswith(PREFIX)
    return None

