# `make test` builds its own virtual environment (.venv) from scratch and runs the test suite.
# torch is installed first, pinned, so that pip takes the CPU wheel and not the CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)

.PHONY: install test lint demo clean

# The package and what it needs to run (enough for the demo) …
$(BIN)/.installed-base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

# … and the test tools (pytest, ruff, TRL, lm-eval) on top.
$(BIN)/.installed: $(BIN)/.installed-base
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -x --durations=15

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: $(BIN)/.installed-base
	$(BIN)/lambda-dpo demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
