# secagg — the two commands: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS := dev,server,torch,demo
STAMP  := $(VENV)/.installed-$(EXTRAS)
PYTEST_ARGS ?=

.PHONY: help install test test-fast demo bench chaos lint vectors check-vectors clean

help:
	@echo "make demo           run a simulated secure aggregation round end to end"
	@echo "make test           create the venv, install, run the whole test suite"
	@echo "make bench          performance runs and the DP learning benchmark (JSON on stdout)"
	@echo "make chaos          the long chaos run (CHAOS_SEED=n replays a plan; needs PostgreSQL)"
	@echo "make lint           ruff + mypy --strict on protocol/ + import-linter"
	@echo "make vectors        regenerate specs/vectors/*.json"
	@echo "make check-vectors  regenerate the vectors in memory and diff with specs/vectors"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/secagg demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.http_round
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.dp_synthetic

# The long chaos run: more rounds and faults than the one in `make test`.
# A new plan each time unless CHAOS_SEED is set; the seed is printed first.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --variant long $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

lint: $(STAMP)
	$(BIN)/ruff check protocol secagg client_sdk secagg_http secagg_sim examples tests benchmarks
	$(BIN)/mypy --strict protocol secagg client_sdk secagg_http secagg_sim examples
	$(BIN)/lint-imports

vectors: $(STAMP)
	$(BIN)/secagg vectors write specs/vectors

check-vectors: $(STAMP)
	$(BIN)/secagg vectors check specs/vectors

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
