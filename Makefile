# medai — setup · demo · test · bench.  `make` creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1): pip takes them from the local disk.
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/medai demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 900

lint: $(STAMP)
	$(BIN)/ruff check medai tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) .medai .pytest_cache .mypy_cache .ruff_cache
