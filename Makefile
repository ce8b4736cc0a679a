# signed-bus: the two commands are `make demo` and `make test` (see README.md).
#   make venv            .venv with the project installed editable, dev and bench extras (stamped),
#                        plus the native hot path (native/, signed-bus-native) where cargo exists
#   make unit            the unit tests (tests/unit) without services, on the pure-Python path
#                        (SIGNED_BUS_NATIVE=0), then again with the native path required
#                        (SIGNED_BUS_NATIVE=1); about 40 s per run on 2 busy cores: a unit test
#                        that asks for Kafka or Redis fails, so does one that skips
#   make wheel-check     build the wheel and check it holds signed_bus/ only (producers/ and
#                        consumers/ are reference agents run from the repository, not installed)
#   make lint            ruff check, ruff format --check (code and the docs' Python blocks),
#                        mypy strict over the library, tests, agents, demo and benchmarks
#   make services-up     real Kafka (127.0.0.1:9092) and Redis (127.0.0.1:6379), see compose/
#   make services-down   stop what compose/local.sh started (never services it did not start)
#   make test            venv, ruff, mypy, the container check (below), then services up + the
#                        whole pytest suite + services down again unless they were running
#                        before, then the unit tests again on the pure-Python path
#                        (SIGNED_BUS_NATIVE=0; the first run takes the native one where it is
#                        built); exits non-zero on failure
#   make test-containers-check   the container part of make test: a container engine (podman
#                        where none answers; compose/engine.sh), the images built or reused
#                        (compose/images.sh), then under SERVICES_BACKEND=containers a signed round
#                        trip, container faults and the attack matrix (tests/integration/
#                        test_containers.py, test_attacks.py); the engine stops again if it
#                        started here
#   make test-containers the whole pytest suite with Kafka and Redis in containers
#   make engine-up / engine-down / images     the container engine and the local images alone
#   make compose-demo    the demo under Compose (docker-compose.yml, profile demo) on the engine
#   make demo            venv, services up, then the demo job; services are left running
#   make soak            10 min through an exactly-once hop on local Kafka and Redis clusters with
#                        a broker and a Redis master killed (benchmarks/soak.py; not in make test)
# Knobs: PYTHON=python3.12, PYTEST_ARGS='-k harness', PYTEST_TIMEOUT=600,
#        SERVICES_BACKEND=local|docker (default: local when Java is installed, else Docker),
#        KAFKA_IMAGE=apache/kafka:4.1.2 REDIS_IMAGE=redis:7 (the container targets: images from a
#        registry instead of the locally built signed-bus/kafka:local, signed-bus/redis:local),
#        DEMO_SCALE=small (the demo in about 10 s), DEMO='-m demo.pipeline --cleanup' (what
#        make demo runs with .venv/bin/python).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.signed-bus-installed
NATIVE_STAMP := $(VENV)/.signed-bus-native-installed
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
SERVICES := bash compose/services.sh
# a hung test fails after this many seconds instead of hanging CI
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
DEMO ?= -m demo.pipeline

.PHONY: help venv lint unit wheel-check services-up services-down services-status test demo soak \
	engine-up engine-down images test-containers-check test-containers compose-demo

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

venv: $(STAMP) $(NATIVE_STAMP)

# re-installs only when pyproject.toml changed since the last install
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "signed-bus needs Python 3.11+; $(PYTHON) is $$($(PYTHON) -V 2>&1). Try: make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --progress-bar off -e '.[dev,bench]'
	@touch $@

# the extension is its own distribution (the signed-bus wheel stays pure Python); without cargo
# the package runs on the pure path, and the unit suite says the extension is missing
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	@if command -v cargo >/dev/null; then \
		echo "building signed-bus-native (native/, cargo $$(cargo --version | cut -d' ' -f2))"; \
		$(PY) -m pip install -q --disable-pip-version-check --progress-bar off ./native; \
	else \
		echo "no cargo: signed-bus-native not built, signed-bus runs on its pure-Python path"; \
	fi
	@touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# no service variables and no containers: tests/conftest.py then fails any test that asks for
# Kafka or Redis, and SIGNED_BUS_FORBID_SKIPS fails any that skips
# the second run leaves out the differential tests, which drive both paths in either run
UNIT_ENV := env -u KAFKA_BOOTSTRAP_SERVERS -u REDIS_URL SERVICES_BACKEND=local SIGNED_BUS_FORBID_SKIPS=1
unit: venv
	$(UNIT_ENV) SIGNED_BUS_NATIVE=0 \
		$(PY) -m pytest -q --timeout=120 -p no:cacheprovider tests/unit $(PYTEST_ARGS)
	$(UNIT_ENV) SIGNED_BUS_NATIVE=1 \
		$(PY) -m pytest -q --timeout=120 -p no:cacheprovider tests/unit $(PYTEST_ARGS) \
		--deselect tests/unit/test_native_differential.py --deselect tests/unit/test_native_batch.py

# the same check tests/unit/test_packaging.py makes (make unit runs it too)
wheel-check: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_packaging.py

services-up:
	$(SERVICES) up

services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

# SIGNED_BUS_FORBID_SKIPS: a skipped test fails the run (tests/conftest.py); pytest's own exit
# code (5 = no tests collected included) is make's
test: lint test-containers-check
	bash compose/tools.sh ensure
	SIGNED_BUS_FORBID_SKIPS=1 $(SERVICES) run -- \
		$(PY) -m pytest --timeout=$(PYTEST_TIMEOUT) --durations=10 $(PYTEST_ARGS)
	$(UNIT_ENV) SIGNED_BUS_NATIVE=0 \
		$(PY) -m pytest -q --timeout=120 -p no:cacheprovider tests/unit \
		--deselect tests/unit/test_native_differential.py --deselect tests/unit/test_native_batch.py

demo: venv services-up
	eval "$$($(SERVICES) env)" && $(PY) $(DEMO)
	@echo "services left running; stop them with: make services-down"

# ---- containers (README.md, "Containers") ------------------------------------------------------
ENGINE := bash compose/engine.sh
# the local images unless KAFKA_IMAGE / REDIS_IMAGE name others (e.g. the official ones)
KAFKA_IMAGE ?=
REDIS_IMAGE ?=
CONTAINER_CHECK := tests/integration/test_containers.py tests/integration/test_attacks.py
# the variables of compose/local.sh's services must not leak in: SERVICES_BACKEND=containers
# ignores them anyway, the unset keeps the intent plain
IN_CONTAINERS = env -u KAFKA_BOOTSTRAP_SERVERS -u REDIS_URL SERVICES_BACKEND=containers \
	SIGNED_BUS_FORBID_SKIPS=1 TESTCONTAINERS_RYUK_DISABLED=true

engine-up:
	$(ENGINE) up

engine-down:
	$(ENGINE) down

images: engine-up
	eval "$$($(ENGINE) env)" && bash compose/images.sh build

# images.sh env only when no image was named
define with_images
eval "$$($(ENGINE) env)" && \
if [ -z "$(KAFKA_IMAGE)$(REDIS_IMAGE)" ]; then bash compose/images.sh build && eval "$$(bash compose/images.sh env)"; \
else export KAFKA_IMAGE="$(or $(KAFKA_IMAGE),apache/kafka:4.1.2)" REDIS_IMAGE="$(or $(REDIS_IMAGE),redis:7)"; fi && \
echo "containers: DOCKER_HOST=$$DOCKER_HOST KAFKA_IMAGE=$$KAFKA_IMAGE REDIS_IMAGE=$$REDIS_IMAGE"
endef

test-containers-check: venv
	$(ENGINE) run -- bash -c '$(with_images) && \
		$(IN_CONTAINERS) $(PY) -m pytest --timeout=$(PYTEST_TIMEOUT) $(CONTAINER_CHECK)'

test-containers: lint
	$(ENGINE) run -- bash -c '$(with_images) && \
		$(IN_CONTAINERS) $(PY) -m pytest --timeout=$(PYTEST_TIMEOUT) --durations=10 $(PYTEST_ARGS)'

# the demo in containers under Compose (compose/compose.sh): prints the report, RESULT: PASS/FAIL
compose-demo:
	$(ENGINE) run -- bash compose/compose.sh demo

# 10 minutes through an exactly-once hop on a 3-node KRaft cluster and a Redis Cluster with
# replicas (started and removed by benchmarks/soak.py), one broker and one Redis master killed
# on the way; not part of `make test`
soak: venv
	$(PY) benchmarks/soak.py --duration $${SOAK_SECONDS:-600} --rate $${SOAK_RATE:-200}
