# The two commands a new user needs: `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install run test lint format bench clean

help:
	@echo "make run    serve oet/executor/1 on an embedded Tango database (Ctrl-C stops it)"
	@echo "make test   lint, then run the whole test suite"
	@echo "make lint   ruff check, ruff format --check, mypy"
	@echo "make bench  lifecycle benchmarks (BENCH_QUICK=1 for a few iterations)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,lint,tango-db]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m ska_oso_oet.run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy src

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks tools
	$(BIN)/ruff format src tests benchmarks tools

$(BIN)/helm: | $(STAMP)
	$(BIN)/python tools/fetch_helm.py $(BIN)/helm

test: lint $(BIN)/helm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# PEER_BENCH=path/to/sardana_bench.sh runs the Sardana peer benchmark first, in the same run,
# and compares with its figures instead of the published ones.
bench: $(STAMP)
ifdef PEER_BENCH
	mkdir -p .oet
	RESULTS_JSON=$(CURDIR)/.oet/peer-bench.json bash $(PEER_BENCH)
	SARDANA_RESULTS_JSON=$(CURDIR)/.oet/peer-bench.json $(BIN)/python benchmarks/lifecycle.py
else
	$(BIN)/python benchmarks/lifecycle.py
endif

clean:
	rm -rf $(VENV) .oet build dist src/*.egg-info
