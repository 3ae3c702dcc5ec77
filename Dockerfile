# syntax=docker/dockerfile:1
# Fashion Florence: one process, one uvicorn worker, one model on one device.
#
#   CPU (default): docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                      -t fashion-florence:cpu .
#   GPU:           docker build --build-arg VARIANT=gpu -t fashion-florence:gpu .
#   Bake the demo model in: --build-arg BAKE_MODEL=demo, then run with
#                  FF_MODEL_PATH=/opt/models/demo
#
# Models are otherwise mounted read-only (e.g. at /models, FF_MODEL_PATH=/models/<name>); with
# FF_MODEL_PATH unset the service serves the trained demo model shipped in the package
# (nothing is trained at start); FF_DEMO_MODEL=random builds its random-weight model into
# FF_DEMO_MODEL_DIR (/var/cache/fashion-florence, mount a writable volume there).
# Python dependencies are pinned by scripts/constraints.txt and installed by
# scripts/install.sh, the same script `make` runs for the test venv (one install path).
# Stop with at least 2 x FF_DRAIN_TIMEOUT_S + a few seconds of grace (docker stop -t 65,
# compose stop_grace_period): SIGTERM drains, then the process exits 0.

ARG VARIANT=cpu
ARG BAKE_MODEL=none

# ---- bases: the interpreter the venv is built for and runs on -------------------------------
FROM python:3.11.11-slim-bookworm AS base-cpu

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS base-gpu
# The distro release is pinned by the tag; its packages follow that release's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---- builder: the venv, through the shared install script (wheels only, no compiler) ---------
FROM base AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
WORKDIR /src
COPY scripts/install.sh scripts/constraints.txt scripts/
COPY pyproject.toml README.md ./
COPY service/ service/
COPY model_store/ model_store/
COPY clients/python/ clients/python/
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3 sh scripts/install.sh /opt/venv ./clients/python . \
    && fashion-florence --help >/dev/null

# ---- models baked in at build time (BAKE_MODEL=none|demo) -----------------------------------
FROM builder AS model-none
RUN mkdir -p /opt/models

FROM builder AS model-demo
RUN fashion-florence model build-demo --out /opt/models/demo >/dev/null

# hadolint ignore=DL3006
FROM model-${BAKE_MODEL} AS models

# ---- runtime: no compiler, no pip cache, non-root ---------------------------------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="fashion-florence" \
      org.opencontainers.image.description="Fashion attribute extraction with Florence-2 (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0750 /var/cache/fashion-florence \
    && install -d -m 0755 /models
COPY --from=builder /opt/venv /opt/venv
COPY --from=models /opt/models /opt/models
COPY deploy/docker/healthcheck.py /opt/fashion-florence/healthcheck.py
ENV FF_HOST=0.0.0.0 \
    FF_PORT=8000 \
    FF_DEMO_MODEL_DIR=/var/cache/fashion-florence/demo-model \
    XDG_CACHE_HOME=/var/cache/fashion-florence \
    HF_HOME=/var/cache/fashion-florence/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_NO_ADVISORY_WARNINGS=1 \
    CUDA_CACHE_PATH=/var/cache/fashion-florence/cuda
USER 10001:10001
WORKDIR /var/cache/fashion-florence
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness only (200 while the model loads); readiness is /readyz, for routing.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/fashion-florence/healthcheck.py"]
ENTRYPOINT ["fashion-florence", "serve"]
