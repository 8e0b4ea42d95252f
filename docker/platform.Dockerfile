# syntax=docker/dockerfile:1
# The platform image: one Python environment for every process of the compose stack (spark-master,
# spark-worker, ingest, ray-head, ray-worker, trainer), so the Spark driver, the Spark executors'
# Python workers and every Ray node run the very same interpreter and packages.
# Build from the repository root: docker build -f docker/platform.Dockerfile .
FROM python:3.11.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Java 17 for Spark (master, worker, driver); procps because Spark's launch scripts call `ps`.
# /usr/share/man/man1 is missing in slim images and the JRE's postinst links man pages into it.
# /opt/java is a stable, architecture-independent JAVA_HOME (amd64 and arm64 differ in the jvm dir name).
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* procps=2:4.* \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
    && /opt/java/bin/java -version

ENV JAVA_HOME=/opt/java \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH=/opt/venv/bin:$PATH

# CPU-only torch from PyTorch's wheel index first: resolving torch from PyPI would pull the
# multi-GB CUDA build. The later installs keep it because it satisfies the project's torch pin.
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# Dependencies in their own layer: only the project metadata is copied, with empty package stubs
# so hatchling can build; source edits then reuse this layer. ray[default] adds the dashboard
# (ray start --dashboard-host) and the Ray client server to the project's ray[rllib].
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client/pyproject.toml client/pyproject.toml
RUN mkdir -p src/rlplatform client/src/rlplatform_client \
    && touch src/rlplatform/__init__.py client/src/rlplatform_client/__init__.py \
    && pip install --no-cache-dir "./client[simulate]" . "ray[default]>=2.50,<3"

# The real sources; --no-deps: every dependency is already in the layer above.
COPY client/src client/src
COPY src src
RUN pip install --no-cache-dir --no-deps --force-reinstall ./client . \
    && rlplatform --help > /dev/null \
    && rlplatform-client --help > /dev/null

# pyspark ships the Spark distribution (bin/spark-class, jars/); SPARK_HOME points at it.
ENV SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark
ENV PATH=/opt/venv/bin:$SPARK_HOME/bin:$PATH \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    SPARK_WORKER_DIR=/home/app/spark-work \
    RAY_USAGE_STATS_ENABLED=0
RUN test -x "$SPARK_HOME/bin/spark-class" && test -d "$SPARK_HOME/jars"

# Non-root. APP_UID defaults to 1000 so a read-only ~/.aws mounted from a typical desktop user
# (docker-compose.aws.yml) stays readable; override with --build-arg APP_UID=$(id -u).
# /checkpoints is created here so a fresh named volume mounted on it inherits the ownership.
ARG APP_UID=1000
RUN groupadd --gid "$APP_UID" app \
    && useradd --uid "$APP_UID" --gid app --create-home --shell /bin/bash app \
    && mkdir -p /checkpoints /home/app/spark-work \
    && chown app:app /checkpoints /home/app/spark-work \
    && rm -rf /src
USER ${APP_UID}:${APP_UID}
WORKDIR /home/app

CMD ["rlplatform", "--help"]
