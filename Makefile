# Set-up and the two main jobs. Override the torch build with e.g. `make test TORCH="torch==2.14.1"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edue-installed

.PHONY: demo demo-3d test test-fast lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edue demo --out runs/demo

demo-3d: $(STAMP)
	$(BIN)/edue demo --dims 3 --out runs/demo-3d

test: $(STAMP)
	$(BIN)/python -m pytest

# everything but the end-to-end tests marked slow (demo, distributed training, kill/resume)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
