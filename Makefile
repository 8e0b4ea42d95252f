# Two entry points for a fresh machine: `make up` (install + run the embedded stack on CartPole)
# and `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint

install: $(STAMP)

# torch==2.13.0 first: it is the CPU build; an unpinned resolve would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e './client[simulate]' -e '.[dev]'
	touch $(STAMP)

up: install
	$(BIN)/rlplatform up --game CartPole-v1 --clients 4 --target-return 475 --max-minutes 15

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
