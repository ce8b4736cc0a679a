"""Session fixtures for the real services (a first cut; the harness owns this file)."""

from __future__ import annotations

import os

import pytest


def _required(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: start the services with `make services-up` "
            "(or `bash compose/local.sh up`) and export the variables it prints",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _required("KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _required("REDIS_URL")
