# Two entry points for a fresh machine: `make up` (install + run the embedded stack on CartPole)
# and `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint browser cassandra-jars cassandra localstack-install localstack spark-cluster

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

test: install cassandra-jars localstack-install browser
	$(BIN)/python -m pytest

# A real browser for the dashboard's tests: Debian's chromium and its chromedriver (no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver || { \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }; }

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

# LocalStack for the tests, without Docker: the compose file's version from PyPI in a virtualenv of its own
# (pinned by compose/localstack/constraints.txt), and kinesis-mock installed by LocalStack's own package
# manager (npm), both under .cache/localstack (tests/localstack_node.py).
LOCALSTACK := $(abspath .cache/localstack)
localstack-install: $(LOCALSTACK)/.installed

$(LOCALSTACK)/.installed: compose/localstack/constraints.txt
	$(PYTHON) -m venv $(LOCALSTACK)/venv
	$(LOCALSTACK)/venv/bin/pip install --quiet --upgrade pip
	$(LOCALSTACK)/venv/bin/pip install --quiet 'localstack-core[runtime]' -c compose/localstack/constraints.txt
	OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT=$(LOCALSTACK)/root XDG_CACHE_HOME=$(LOCALSTACK)/cache \
		npm_config_cache=$(LOCALSTACK)/npm $(LOCALSTACK)/venv/bin/python -m localstack.cli.lpm install kinesis-mock
	touch $@

# LocalStack (Kinesis, S3) on 127.0.0.1:4566 until Ctrl-C, with the stream and bucket the settings name.
localstack: install localstack-install
	$(BIN)/python -m tests.localstack_node --port 4566

# A Spark standalone master and WORKERS one-core workers on 127.0.0.1 until Ctrl-C (PIN=1: worker i on CPU i),
# e.g. for `rlplatform bench ingest --master spark://127.0.0.1:PORT` (the master URL is printed).
WORKERS ?= 2
spark-cluster: install
	$(BIN)/python -m tests.spark_cluster --workers $(WORKERS) $(if $(PIN),--pin)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
