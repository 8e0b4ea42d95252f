# syntax=docker/dockerfile:1
# The game-client image: only the rlplatform-client SDK with its [simulate] extra (boto3, numpy,
# onnxruntime, gymnasium). No pyspark, ray or torch.
# Build from the repository root: docker build -f docker/client.Dockerfile .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first (metadata plus an empty package stub), sources second, for layer caching.
WORKDIR /src
COPY client/pyproject.toml client/pyproject.toml
RUN mkdir -p client/src/rlplatform_client \
    && touch client/src/rlplatform_client/__init__.py \
    && pip install --no-cache-dir "./client[simulate]"
COPY client/src client/src
RUN pip install --no-cache-dir --no-deps --force-reinstall ./client \
    && rlplatform-client --help > /dev/null

# Non-root; same APP_UID default as the platform image (readable ~/.aws mounts, see there).
ARG APP_UID=1000
RUN groupadd --gid "$APP_UID" app \
    && useradd --uid "$APP_UID" --gid app --create-home --shell /bin/bash app \
    && rm -rf /src
USER ${APP_UID}:${APP_UID}
WORKDIR /home/app

CMD ["rlplatform-client", "--help"]
