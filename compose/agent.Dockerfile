# The reference agents (producers/, consumers/), the demo (demo/) and the signed_bus library, for
# the "agents" and "demo" profiles of compose/docker-compose.yml. No keys in the image: they are
# mounted at run time (the demo makes its own per run). Only signed_bus is installed (the wheel
# holds nothing else); the agents and the demo run from /app, the working directory, as
# `python -m producers.inference_agent` runs them from a checkout.
#
# AGENT_BASE: any image with python3 (3.11+) and its venv module: python:3.11-slim by default,
# signed-bus/base:local (compose/images.sh, Debian bookworm's python3) without a registry.
# Dependencies: the wheels in compose/wheels/ when compose/compose.sh put them there (built on
# the host from PyPI, so the image build needs no index nor the host's certificates), else PyPI.
ARG AGENT_BASE=python:3.11-slim
FROM ${AGENT_BASE}
# optional extras (e.g. otel,prometheus: docs/OBSERVABILITY.md); none by default
ARG AGENT_EXTRAS=
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && ln -sf /opt/venv/bin/python3 /opt/venv/bin/python
WORKDIR /app
COPY pyproject.toml README.md ./
COPY signed_bus ./signed_bus
COPY producers ./producers
COPY consumers ./consumers
COPY compose/wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /tmp/wheels "signed-bus${AGENT_EXTRAS:+[$AGENT_EXTRAS]}"; \
    else \
        pip install ".${AGENT_EXTRAS:+[$AGENT_EXTRAS]}"; \
    fi \
    && rm -rf /tmp/wheels
COPY demo ./demo
