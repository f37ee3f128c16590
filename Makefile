# olm-edu: `make lab` to learn, `make instructor` to author and grade, `make test` to check everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Jupyter options for `make lab`, e.g. `make lab LAB_ARGS="--port 8890 --no-browser"`.
LAB_ARGS ?=

.PHONY: lab instructor test lessons book clean-venv

# The learner's JupyterLab: lessons/ only, without nbgrader's instructor tools (Create Assignment,
# Formgrader, and a Validate button that rewrites the notebook). jupyter-config/learner/ turns them
# off through JUPYTER_CONFIG_PATH, so nothing installed is changed.
LEARNER_CONFIG := $(CURDIR)/jupyter-config/learner
lab: $(VENV)/.installed
	env JUPYTER_CONFIG_PATH="$(LEARNER_CONFIG)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" $(BIN)/jupyter lab --ServerApp.root_dir=lessons $(LAB_ARGS)

# The instructor's JupyterLab: the whole course (solutions/ too) with nbgrader's tools.
instructor: $(VENV)/.installed
	$(BIN)/jupyter lab $(LAB_ARGS)

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
