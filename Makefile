# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-all
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

demo: $(VENV)/.installed-all
	$(BIN)/onnxsight demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) onnxsight-demo .pytest_cache
