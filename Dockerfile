# syntax=docker/dockerfile:1
#
# zephyr-edge container image.
#
#   docker build -t registry.example.com/zephyr-edge:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/config.json:/etc/ze-worker/config.json:ro" \
#       registry.example.com/zephyr-edge:0.1.0
#
# Two stages: "build" turns the repository (with the brotli extra) and every dependency
# into wheels; the final stage installs those wheels only, so it carries no compiler, no
# build tool and no pip cache. The worker runs as the numeric user 10001 (the Kubernetes
# manifests in k8s/base/ set runAsUser to the same number; tests/deploy checks both agree).
# Checked by tests/deploy (hadolint and our own rules); see docs/deployment.md.

FROM python:3.12.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel needs (the rest is excluded by .dockerignore anyway).
COPY setup.py setup.cfg README.md ./
COPY zephyr_edge ./zephyr_edge

# Every dependency publishes manylinux wheels for CPython 3.12 (amd64 and arm64), so no
# compiler is installed here. On a platform without them, install build-essential in
# THIS stage only: the final stage never gets it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[brotli]"


FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ZE_WORKER_CONFIG_JSON=/etc/ze-worker/config.json \
    ZE_WORKER_DATA_DIR=/var/lib/zephyr-edge

RUN groupadd --system --gid 10001 zephyr-edge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/zephyr-edge --shell /usr/sbin/nologin zephyr-edge \
    && mkdir -p /etc/ze-worker /var/lib/zephyr-edge \
    && chown 10001:10001 /var/lib/zephyr-edge

# The wheels are bind-mounted from the build stage: they never become a layer here.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
    && rm -rf /root/.cache

WORKDIR /var/lib/zephyr-edge
USER 10001:10001
EXPOSE 8080

ENTRYPOINT ["zephyr-edge", "serve"]
