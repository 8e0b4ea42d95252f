# Two entry points for a fresh machine: `make up` (install + run the embedded stack on CartPole)
# and `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint cassandra-jars cassandra

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

test: install cassandra-jars
	$(BIN)/python -m pytest

# A real Cassandra for the tests, without Docker: its jars from Maven Central (tests/cassandra_node.py).
CASSANDRA_JARS := .cache/cassandra/lib
cassandra-jars: $(CASSANDRA_JARS)/.fetched

$(CASSANDRA_JARS)/.fetched: compose/cassandra/pom.xml
	mvn -q -B -f compose/cassandra/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(abspath $(CASSANDRA_JARS))
	touch $@

# A single-node Cassandra on 127.0.0.1:9042 until Ctrl-C, for RLP_STORE=cassandra on a laptop.
cassandra: install cassandra-jars
	$(BIN)/python -m tests.cassandra_node --port 9042

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
