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

# nvidia-pytriton (the 'triton' extra) pins numpy<2, which only its Python-backend stub needs and
# onnxsight gives the stub apart: installed here without that pin, for tests/test_pytriton.py
$(VENV)/.installed-triton: $(VENV)/.installed-dev
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
	  $(BIN)/python -m pip install --quiet pyzmq sh typing_inspect wrapt importlib_metadata && \
	  $(BIN)/python -m pip install --quiet --no-deps 'nvidia-pytriton>=0.5'; fi
	touch $@

demo: $(VENV)/.installed-all
	$(BIN)/onnxsight demo

test: $(VENV)/.installed-dev $(VENV)/.installed-triton
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) onnxsight-demo .pytest_cache
