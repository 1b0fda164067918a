# EnergyMesh developer commands. `make run` and `make test` bootstrap everything they need
# (a .venv with the pinned Python packages, the pinned npm tools) and are safe to repeat.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
BUF := node_modules/.bin/buf
GOOGLEAPIS := build/googleapis
PROTOS := $(shell find proto -name '*.proto' 2>/dev/null | sort)
GOOGLE_PROTOS := api/annotations api/http api/httpbody api/field_behavior rpc/status rpc/error_details rpc/code

.PHONY: help setup run demo test lint gen gen-check bench clean

help:
	@echo "make run        start the whole mesh on http://127.0.0.1:8080"
	@echo "make test       lint, check generated code, run every test"
	@echo "make lint       buf lint, ruff, mypy --strict"
	@echo "make gen        regenerate gen/ from proto/"
	@echo "make gen-check  fail when gen/ is stale"
	@echo "make bench      run the ingest and analytics benchmarks (print tables)"
	@echo "make demo       make run, plus the meter simulator streaming live readings"
	@echo "make clean      remove the virtualenv, npm packages, build output and local data"

# --- bootstrap --------------------------------------------------------------------------------

$(BIN)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# google/api and google/rpc protos, copied from the googleapis-common-protos wheel so that
# buf and protoc resolve them offline.
$(GOOGLEAPIS)/.copied: $(BIN)/.installed
	@rm -rf $(GOOGLEAPIS)
	@src=$$($(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))'); \
	for f in $(GOOGLE_PROTOS); do mkdir -p $(GOOGLEAPIS)/google/$$(dirname $$f); \
		cp $$src/google/$$f.proto $(GOOGLEAPIS)/google/$$f.proto; done
	@touch $@

setup: $(BIN)/.installed node_modules/.installed $(GOOGLEAPIS)/.copied

# --- generated code ---------------------------------------------------------------------------

# Writes every generated artefact under $(1): Python stubs with .pyi, the TypeScript SDK,
# the descriptor set Envoy loads and the OpenAPI document.
define generate
	rm -rf $(1)/python $(1)/ts/src $(1)/descriptor.binpb $(1)/openapi.json
	mkdir -p $(1)/python $(1)/ts/src
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m grpc_tools.protoc -I proto -I $(GOOGLEAPIS) \
		--python_out=$(1)/python --grpc_python_out=$(1)/python \
		--mypy_out=$(1)/python --mypy_grpc_out=$(1)/python $(PROTOS)
	find $(1)/python/energymesh -type d -exec touch {}/__init__.py \;
	$(BUF) generate --template buf.gen.yaml -o $(1)/..
	$(BUF) build -o $(1)/descriptor.binpb
	$(PY) -m services.kernel.openapi $(1)/descriptor.binpb $(1)/openapi.json
endef

gen: setup
	$(call generate,gen)

gen-check: setup
	@rm -rf build/gen-check && mkdir -p build/gen-check/gen
	@$(call generate,build/gen-check/gen) >/dev/null
	@diff -r -x node_modules gen build/gen-check/gen >/dev/null \
		|| { echo "gen/ is stale: run 'make gen' and commit the result"; diff -rq -x node_modules gen build/gen-check/gen; exit 1; }
	@echo "gen/ is up to date"

# --- quality ----------------------------------------------------------------------------------

lint: setup
	$(BUF) lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	node_modules/.bin/tsc -p tsconfig.json

# --- running ----------------------------------------------------------------------------------

run: setup
	$(PY) -m services.launcher run

test: lint gen-check
	$(BIN)/pytest

# Ingest figures (about two minutes on 2 cores) and analytics figures, each on a fresh mesh;
# BENCH_ARGS=--scale 4 for a bigger ingest run, ANALYTICS_BENCH_ARGS=--scale 1 for 35M readings
# readings of analytics.
bench: setup
	$(PY) -m benchmarks.ingest $(BENCH_ARGS)
	$(PY) -m benchmarks.analytics $(ANALYTICS_BENCH_ARGS)

# The whole mesh plus the simulator: four weeks of history (enough for forecasts), then live
# readings; its demo site's electricity is priced with a day/night tariff. Watch
# GET /v1/meters/{id}/readings:latest move and ask for the site's consumption. Ctrl-C stops both.
demo: setup
	@$(PY) -m services.launcher run & mesh=$$!; \
	trap 'kill $$mesh 2>/dev/null; wait $$mesh' EXIT INT TERM; \
	$(PY) -m services.telemetry.simulate --gateway 127.0.0.1:8080 --wait --meters 20 --days 28 --live

clean:
	rm -rf $(VENV) node_modules build .energymesh .mypy_cache .ruff_cache .pytest_cache
