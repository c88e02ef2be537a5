# Two entry points: `make demo` (the main job) and `make test` (lint, types, tests).
# Each creates .venv on first use; torch==2.13.0 is installed first so that pip never
# resolves `torch` to a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imprag-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint test-fast

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imprag demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check imprag tests benchmarks
	$(VENV)/bin/ruff format --check imprag tests benchmarks
	$(VENV)/bin/mypy

# One OpenMP thread per process: several tests start subprocesses (torchrun, kill -9 + resume, servers),
# and two threads each on two shared cores made them 5-10x slower here.
test: lint
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)
