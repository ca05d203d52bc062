# turnout: two commands. `make up` runs the local platform, `make test` runs every check.
# Both install what they need into .venv/ first; a second run with nothing changed is quick.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TURNOUT_HOME ?= $(CURDIR)/.turnout

.PHONY: up test venv prometheus lint typecheck contracts unit bench clean

venv: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel; constraints.txt pins every transitive dependency.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Prometheus (Debian package) reads the metrics the controller judges, in `make up` and the
# integration tests; without it they fall back to scraping the router directly.
prometheus:
	command -v prometheus >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

up: $(STAMP) prometheus
	$(VENV)/bin/turnout up

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

unit: $(STAMP) prometheus
	$(VENV)/bin/pytest -q

test: lint typecheck contracts unit

# wrk is the throughput client (a Debian package); bench/support/aioclient.py cross-checks latency.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(PY) bench/model_server.py
	$(PY) bench/router_overhead.py
	$(PY) bench/shadow_impact.py
	$(PY) bench/rollback_latency.py

clean:
	rm -rf $(VENV) .turnout .mypy_cache .ruff_cache .pytest_cache
