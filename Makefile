# The two commands: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs; nothing else is needed on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck schemas bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/rollguard demo

test: $(VENV)/.dev-installed
	$(BIN)/ruff check rollguard services tests
	$(BIN)/mypy rollguard services
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check rollguard services tests
	$(BIN)/ruff format --check rollguard services tests

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy rollguard services

schemas: $(VENV)/.demo-installed
	$(BIN)/rollguard schemas export

# Throughput, false breaches, detection delay, memory, exact-path checks (< 10 min).
bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .rollguard .mypy_cache .ruff_cache .pytest_cache
