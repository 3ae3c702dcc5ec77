# syntax=docker/dockerfile:1
# Fashion Florence: one process, one uvicorn worker, one model on one device.
#
#   CPU (default): docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                      -t fashion-florence:cpu .
#   GPU:           docker build --build-arg VARIANT=gpu -t fashion-florence:gpu .
#                  (any image with Python >= 3.11 and a CUDA torch as the base:
#                  --build-arg GPU_BASE=<your registry's PyTorch image>)
#   Bake the demo model in: --build-arg BAKE_MODEL=demo, then run with
#                  FF_MODEL_PATH=/opt/models/demo
#   A Ray cluster's image (deploy/ray): --build-arg EXTRAS=ray adds the [ray] extra; the
#                  serving image never needs it
#
# Models are otherwise mounted read-only (e.g. at /models, FF_MODEL_PATH=/models/<name>); with
# FF_MODEL_PATH unset the service serves the trained demo model shipped in the package
# (nothing is trained at start); FF_DEMO_MODEL=random builds its random-weight model into
# FF_DEMO_MODEL_DIR (/var/cache/fashion-florence, mount a writable volume there).
# Python dependencies are pinned by scripts/constraints.txt and installed by
# scripts/install.sh, the same script `make` runs for the test venv (one install path).
# The GPU variant never installs torch: it keeps the base image's CUDA build and installs the
# rest from a wheelhouse into a folder on PYTHONPATH, exactly as on a GPU host without an
# image (docs/operations.md), so the image and the host path are one path too.
# Stop with at least 2 x FF_DRAIN_TIMEOUT_S + a few seconds of grace (docker stop -t 65,
# compose stop_grace_period): SIGTERM drains, then the process exits 0.

ARG VARIANT=cpu
ARG BAKE_MODEL=none
# A CUDA torch comes with this image; the service's own packages are added on top.
ARG GPU_BASE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

# ---- bases: the interpreter (and, for the GPU, the torch) the service runs on ----------------
FROM python:3.11.11-slim-bookworm AS base-cpu
# A venv at /opt/ff holds everything, torch included.
ENV VIRTUAL_ENV=/opt/ff \
    PATH=/opt/ff/bin:$PATH

# hadolint ignore=DL3006
FROM ${GPU_BASE} AS base-gpu
# The base image's own python and torch; /opt/ff is a folder on PYTHONPATH holding only what
# that python lacks (scripts/install.sh --wheelhouse never installs or shadows torch).
ENV PYTHONPATH=/opt/ff \
    PATH=/opt/ff/bin:$PATH

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- builder: /opt/ff, through the shared install script (wheels only, no compiler) ----------
FROM base AS sources
WORKDIR /src
COPY scripts/install.sh scripts/wheelhouse.sh scripts/offline_plan.py scripts/constraints.txt scripts/
COPY pyproject.toml README.md ./
COPY service/ service/
COPY model_store/ model_store/
COPY clients/python/ clients/python/

FROM sources AS builder-cpu
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG EXTRAS=
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3 sh scripts/install.sh /opt/ff ./clients/python ".${EXTRAS:+[$EXTRAS]}"

FROM sources AS builder-gpu
ARG EXTRAS=
# The wheelhouse is downloaded here (the build has an index) for this image's python; the
# install is then the offline one a GPU host runs, onto the base image's torch.
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3 sh scripts/wheelhouse.sh --extras "$EXTRAS" /tmp/wheels \
    && PYTHON=python3 sh scripts/install.sh --wheelhouse /tmp/wheels --extras "$EXTRAS" \
        --target /opt/ff \
    && rm -rf /tmp/wheels

# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder
RUN fashion-florence --help >/dev/null

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
COPY --from=builder /opt/ff /opt/ff
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
