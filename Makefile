# twotier: `make demo` and `make test` work on a fresh clone with only what the machine has
# (Python 3.11, Java 17 + Maven, Go, Rust nightly by rustup, cmake and a C compiler).
# Everything else is installed here and cached in ~/.cache/twotier (TWOTIER_CACHE_DIR).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TWOTIER := $(BIN)/twotier
DATASET ?= ../shared/datasets/movielens-small
PROJECT ?= movielens
DEMO_LIMIT ?= 20000
PYTEST_ARGS ?=

.PHONY: help setup stack-install browser up down status demo test test-unit test-faults test-integration lint format clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	@touch $@

setup: $(BIN)/.installed  ## Create .venv with the pinned dependencies.

stack-install: setup  ## Download and build Kafka, SecantusDB, FerretDB and the Spark jars (cached).
	$(TWOTIER) install
	$(TWOTIER) install --only ferretdb

# Debian's Chromium checks the served pages headless (tests, docs screenshots); its
# packages are kept in the cache folder, so a new machine downloads them once.
CACHE_DIR ?= $(or $(TWOTIER_CACHE_DIR),$(HOME)/.cache/twotier)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:  ## Install Debian's chromium (headless page checks) unless it is there.
	@command -v chromium >/dev/null || { \
	  mkdir -p $(CACHE_DIR)/apt/archives/partial && \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    -o Dir::Cache::Archives=$(CACHE_DIR)/apt/archives chromium >/dev/null && \
	  echo "installed $$(chromium --version 2>/dev/null)"; }

up: setup  ## Start the local stack (idempotent).
	$(TWOTIER) up

down:  ## Stop the local stack.
	@test -x $(TWOTIER) && $(TWOTIER) down || true

status: setup  ## Show the local stack.
	$(TWOTIER) status

demo: setup  ## Start the stack and run the walking skeleton end to end.
	$(BIN)/python -m twotier.infra.demo --project $(PROJECT) --dataset $(DATASET) --limit $(DEMO_LIMIT)

test: setup stack-install browser  ## Install everything and run every test (unit, integration, e2e).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup  ## Unit tests only (no services).
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-faults: setup stack-install  ## kill -9 of each component in turn; costs in bench/results/faults.json.
	$(BIN)/python -m pytest -m faults tests/faults $(PYTEST_ARGS)

test-integration: setup stack-install browser  ## Integration and e2e tests (real services).
	$(BIN)/python -m pytest -m "integration or e2e" $(PYTEST_ARGS)

BENCH_ARGS ?=

.PHONY: bench
bench: setup stack-install  ## Run every benchmark; JSON, Markdown table and plots in bench/results/.
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: setup  ## ruff (lint + format check) and mypy.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy platform pipelines serve_apps feature_jobs infra tests

format: setup  ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: down  ## Remove the venv and the local data (the cache in ~/.cache/twotier stays).
	rm -rf $(VENV) .twotier .twotier-test
