# Set-up is part of every target: the first `make train` or `make test` creates .venv and installs the project.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch is enough here; on a GPU machine use e.g. TORCH_SPEC="torch>=2.3".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast clean-outputs

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## train: a real masked-LM pretraining run of linformer_tiny on the embedded corpus (CPU, a few minutes)
train: $(STAMP)
	$(BIN)/linformer-train $(ARGS)

## test: the test suite (all of it, about 9 minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

## test-fast: the suite without the tests marked slow (pytest.ini), for quick checks while editing
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow and not slurm and not multinode"

clean-outputs:
	rm -rf outputs multirun
