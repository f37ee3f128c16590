# olm-edu: `make lab` to learn, `make test` to check everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Jupyter options for `make lab`, e.g. `make lab LAB_ARGS="--port 8890 --no-browser"`.
LAB_ARGS ?=

.PHONY: lab test lessons book clean-venv

lab: $(VENV)/.installed
	$(BIN)/jupyter lab --ServerApp.root_dir=lessons $(LAB_ARGS)

# Two workers (pytest-xdist); each file stays on one worker, lesson tests are spread (conftest.py).
# `make test TEST_ARGS=` runs serially; `make test TEST_ARGS="-k rope"` picks tests (serially).
TEST_ARGS ?= -n 2 --dist loadscope
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(TEST_ARGS)

lessons: $(VENV)/.installed
	$(BIN)/olm-edu lessons

# The Jupyter Book edition, offline, into book/_build/html (see book/README.md).
book: $(VENV)/.installed-book
	$(BIN)/python -m olm_edu.book build

clean-venv:
	rm -rf $(VENV)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "olm-edu needs Python 3.11 or newer; found " + sys.version.split()[0] + " (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes; the stamp files record the last install.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The tests build the book too, so they need its extra.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,book]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-book

$(VENV)/.installed-book: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[book]'
	touch $@ $(VENV)/.installed
