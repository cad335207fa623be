# The two commands: `make book` and `make test`. Both set up .venv from requirements.txt first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: book test setup clean nbval bench colab-check

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# No JAX_PLATFORMS here: `import vishwamai` (each chapter's first cell) selects the CPU on a
# machine without a TPU or GPU and keeps the AOT plugins' start-up probes out of the chapters
# (vishwamai/startup.py); set JAX_PLATFORMS yourself to choose another platform.

# Execute every chapter and build the HTML into _build/html (index.html is the entry).
book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# The whole suite: unit tests and every chapter, each chapter once, cell by cell under nbval-lax
# with CI-sized parameters (papermill injects them into book/.ci-*.ipynb copies: conftest.py).
# loadfile keeps a chapter's cells (and a test module's fixtures) on one worker; conftest.py's
# scheduler (tests/scheduling.py) hands out the longest files first, so both workers finish
# together, and writes each file's measured seconds to _build/test_seconds.json.
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --nbval-kernel-startup-timeout=300
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --durations=15 $(NBVAL) tests book

# Only the chapters, as `make test` runs them.
nbval: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile $(NBVAL) book

# Colab's TPU image (requirements-colab.txt): the package built as a wheel and installed the way
# the chapters' install cell does (not editable), then the unit tests, and every chapter run as
# Colab would (google.colab present, the install cell pointed at the wheel), from a copy of the
# tests and chapters without the source tree, so only the installed package can be imported.
COLAB_VENV  := .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.installed
COLAB_DIR   := _build/colab-check

$(COLAB_STAMP): requirements-colab.txt
	test -x $(COLAB_VENV)/bin/python || $(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install --quiet -r requirements-colab.txt
	touch $(COLAB_STAMP)

colab-check: $(STAMP) $(COLAB_STAMP)
	rm -rf $(COLAB_DIR) && mkdir -p $(COLAB_DIR)/dist
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(COLAB_DIR)/dist .
	$(COLAB_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(COLAB_DIR)/dist/vishwamai-*.whl
	cp -r tests book conftest.py _config.yml _toc.yml pyproject.toml $(COLAB_DIR)/
	rm -rf $(COLAB_DIR)/book/_build $(COLAB_DIR)/book/.ci-*.ipynb
	cd $(COLAB_DIR) && VISHWAMAI_COLAB_WHEEL=$$(ls $(CURDIR)/$(COLAB_DIR)/dist/vishwamai-*.whl) \
		$(CURDIR)/$(COLAB_VENV)/bin/python -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider \
		--durations=10 $(NBVAL) tests book

clean:
	rm -rf _build .pytest_cache book/.ci-*.ipynb
