# `make test` builds its own virtual environment (.venv) from scratch and runs the test suite.
# torch is installed first, pinned, so that pip takes the CPU wheel and not the CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)

.PHONY: install test lint demo clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -x --durations=15

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: install
	$(BIN)/lambda-dpo demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
