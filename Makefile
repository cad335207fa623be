# The two commands: `make book` and `make test`. Both set up .venv from requirements.txt first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: book test setup clean nbval bench

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Execute every chapter and build the HTML into _build/html (index.html is the entry).
book: $(STAMP)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-} $(BIN)/jupyter-book build . --warningiserror --keep-going
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# The whole suite: unit tests, then every chapter executed with CI-sized parameters.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --durations=15 tests

# The chapters again, cell by cell under nbval-lax (parametrised by papermill).
nbval: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax book

clean:
	rm -rf _build .pytest_cache book/.ci-*.ipynb
