# The reference agents (producers/, consumers/) and the signed_bus library, for the "agents"
# profile of compose/docker-compose.yml. No keys in the image: they are mounted at run time.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY signed_bus ./signed_bus
COPY producers ./producers
COPY consumers ./consumers
RUN pip install .
