# Set-up and the two main jobs. Override the torch build with e.g. `make test TORCH="torch==2.14.1"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edue-installed
# The smp backbones need torchvision built for the same torch: a second environment with
# a matching pair (the pinned CPU torch has no torchvision build on the package index).
TORCH_BACKBONES ?= torch==2.14.1 torchvision==0.29.1
VENV_BB := .venv-backbones
BIN_BB := $(VENV_BB)/bin
STAMP_BB := $(VENV_BB)/.edue-installed

.PHONY: demo demo-3d test test-fast test-backbones lint bench install clean

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

test: $(STAMP) $(STAMP_BB)
	$(BIN)/python -m pytest
	$(BIN_BB)/python -m pytest -m backbones

$(STAMP_BB): pyproject.toml
	test -x $(BIN_BB)/python || $(PYTHON) -m venv $(VENV_BB)
	$(BIN_BB)/python -m pip install --quiet $(TORCH_BACKBONES)
	$(BIN_BB)/python -m pip install --quiet -e ".[dev,backbones]"
	touch $(STAMP_BB)

# the segmentation-models-pytorch backbones' tests alone, in their own environment
test-backbones: $(STAMP_BB)
	$(BIN_BB)/python -m pytest -m backbones

# everything but the end-to-end tests marked slow (demo, distributed training, kill/resume)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VENV_BB) runs
