# medai — setup · demo · test · test-fast · lint · bench · notebooks.  `make` creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-fast lint bench notebooks clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1): pip takes them from the local disk.
	$(BIN)/pip install --quiet -e '.[dev,bench,research]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/medai demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 900

# The quick lane: everything but the tests marked slow (those that start servers, peers or
# subprocesses end to end); no lint, so it can run while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 900 -m "not slow"

# Style, formatting, types and the layer rules (the import contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check medai tests benchmarks
	$(BIN)/ruff format --check medai tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

# The research notebooks, executed by papermill into $(NOTEBOOKS_OUT) (the committed ones stay
# without outputs), with an HTML copy of each. By default on a synthetic campaign they build in
# $(NOTEBOOKS_OUT)/home; NOTEBOOKS_HOME=~/my-home NOTEBOOKS_STUDIES=0 runs them on a campaign
# as it is (MEDAI_DATABASE_URL or MEDAI_MLFLOW_TRACKING_URI, if set, still win over the home).
NOTEBOOKS_OUT ?= build/notebooks
NOTEBOOKS_HOME ?= $(NOTEBOOKS_OUT)/home
NOTEBOOKS_STUDIES ?= 90
NOTEBOOKS_IMAGE_SIZE ?= 32
NOTEBOOKS_EPOCHS ?= 3
PAPERMILL = $(BIN)/papermill --cwd notebooks -p HOME $(abspath $(NOTEBOOKS_HOME))

notebooks: $(STAMP)
	mkdir -p $(NOTEBOOKS_OUT)
	rm -rf $(NOTEBOOKS_OUT)/export
	$(PAPERMILL) notebooks/01_explore_campaign.ipynb $(NOTEBOOKS_OUT)/01_explore_campaign.ipynb \
		-p STUDIES $(NOTEBOOKS_STUDIES) -p IMAGE_SIZE $(NOTEBOOKS_IMAGE_SIZE)
	$(PAPERMILL) notebooks/02_train_and_track.ipynb $(NOTEBOOKS_OUT)/02_train_and_track.ipynb \
		-p IMAGE_SIZE $(NOTEBOOKS_IMAGE_SIZE) -p EPOCHS $(NOTEBOOKS_EPOCHS)
	$(PAPERMILL) notebooks/03_evaluate_and_promote.ipynb $(NOTEBOOKS_OUT)/03_evaluate_and_promote.ipynb \
		-p EXPORT_DIR $(abspath $(NOTEBOOKS_OUT))/export
	$(BIN)/jupyter nbconvert --to html $(NOTEBOOKS_OUT)/0*.ipynb

clean:
	rm -rf $(VENV) .medai .pytest_cache .mypy_cache .ruff_cache
