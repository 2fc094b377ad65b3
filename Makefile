# The two commands a new user needs: `make run` and `make test`.
# Both create their venvs and install what they need on a fresh machine.

# `python$(1)` where it runs, else pyenv's interpreter of that version (a pyenv shim names
# only the versions pyenv has selected, so python3.13 may be installed yet not on PATH).
find_python = $(shell for p in python$(1) "$$(pyenv prefix $(1) 2>/dev/null)/bin/python$(1)"; \
                do "$$p" -c '' 2>/dev/null && { command -v "$$p"; break; }; done)

# The suite runs on every version setup.cfg's python_requires names: 3.11 (the default venv,
# which `make run`, lint and the benchmarks use) and 3.13.
PYTHON ?= $(or $(call find_python,3.11),$(shell command -v python3))
PYTHON_313 ?= $(call find_python,3.13)
VENV := .venv
VENV_313 := .venv-3.13
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# TangoGQL, the GraphQL gateway between Taranta and Tango, for the end-to-end tests: a venv of
# its own, for it needs starlette < 1, which the FastAPI of the REST face does not accept.
VENV_GQL := .venv-tangogql
TANGOGQL := tangogql==2.3.0
PYTEST_ARGS ?=

.PHONY: help install run test test-3.11 test-3.13 lint format bench clean
# One thing at a time, even under -j: the two test runs share the machine and its ports.
.NOTPARALLEL:

help:
	@echo "make run    serve oet/executor/1 on an embedded Tango database (Ctrl-C stops it)"
	@echo "make test   lint, then run the whole test suite on Python 3.11 and on 3.13"
	@echo "make lint   ruff check, ruff format --check, mypy (for 3.11 and for 3.13)"
	@echo "make bench  lifecycle, operator face and script output benchmarks (BENCH_QUICK=1: a few iterations)"

# One rule for both venvs: $* is the venv's directory.
python_for = $(if $(filter $(VENV_313),$(1)),$(PYTHON_313),$(PYTHON))

$(VENV)/bin/python $(VENV_313)/bin/python: %/bin/python:
	@test -n "$(call python_for,$*)" || { echo "no Python interpreter found for $*" >&2; exit 1; }
	$(call python_for,$*) -m venv $*
	$*/bin/python -m pip install --quiet --upgrade pip

$(STAMP) $(VENV_313)/.installed: %/.installed: %/bin/python setup.cfg pyproject.toml
	$*/bin/python -m pip install --quiet -e '.[test,lint,tango-db]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m ska_oso_oet.run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy src
	$(BIN)/mypy --python-version 3.13 src

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks tools
	$(BIN)/ruff format src tests benchmarks tools

$(VENV_GQL)/.installed: | $(STAMP)
	$(PYTHON) -m venv $(VENV_GQL)
	$(VENV_GQL)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_GQL)/bin/python -m pip install --quiet '$(TANGOGQL)' 'pytango>=10.3,<10.4'
	@touch $@

$(BIN)/helm: | $(STAMP)
	$(BIN)/python tools/fetch_helm.py $(BIN)/helm

# Lint once, then the suite on each version in turn; -k runs 3.13 even when 3.11 fails.
test: lint
	@$(MAKE) --no-print-directory -k test-3.11 test-3.13

# The one helm binary lives in .venv/bin; HELM hands it to the 3.13 run as well.
pytest_in = $(if $(wildcard $(BIN)/helm),HELM=$(CURDIR)/$(BIN)/helm) \
	$(if $(wildcard $(VENV_GQL)/.installed),TANGOGQL_PYTHON=$(CURDIR)/$(VENV_GQL)/bin/python) \
	$(1)/bin/python -m pytest $(PYTEST_ARGS)

test-3.11: $(STAMP) $(BIN)/helm $(VENV_GQL)/.installed
	$(call pytest_in,$(VENV))

test-3.13: $(VENV_313)/.installed $(BIN)/helm $(VENV_GQL)/.installed
	$(call pytest_in,$(VENV_313))

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
	$(BIN)/python benchmarks/face.py
	$(BIN)/python benchmarks/history.py
	$(BIN)/python benchmarks/output.py

clean:
	rm -rf $(VENV) $(VENV_313) $(VENV_GQL) .oet build dist src/*.egg-info
