# signed-bus: the two commands are `make demo` and `make test` (see README.md).
#   make venv            .venv with the project installed editable, dev extra included (stamped)
#   make services-up     real Kafka (127.0.0.1:9092) and Redis (127.0.0.1:6379), see compose/
#   make services-down   stop what compose/local.sh started (never services it did not start)
#   make test            venv, ruff, mypy, then services up + the whole pytest suite + services
#                        down again unless they were running before; exits non-zero on failure
#   make demo            venv, services up, then the demo job; services are left running
# Knobs: PYTHON=python3.12, PYTEST_ARGS='-k harness', PYTEST_TIMEOUT=600,
#        SERVICES_BACKEND=local|docker (default: local when Java is installed, else Docker),
#        DEMO_SCALE=small (the demo in about 10 s), DEMO='-m demo.pipeline --cleanup' (what
#        make demo runs with .venv/bin/python).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.signed-bus-installed
SERVICES := bash compose/services.sh
# a hung test fails after this many seconds instead of hanging CI
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
DEMO ?= -m demo.pipeline

.PHONY: help venv lint services-up services-down services-status test demo

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

venv: $(STAMP)

# re-installs only when pyproject.toml changed since the last install
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "signed-bus needs Python 3.11+; $(PYTHON) is $$($(PYTHON) -V 2>&1). Try: make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --progress-bar off -e '.[dev]'
	@touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

services-up:
	$(SERVICES) up

services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

# SIGNED_BUS_FORBID_SKIPS: a skipped test fails the run (tests/conftest.py); pytest's own exit
# code (5 = no tests collected included) is make's
test: lint
	SIGNED_BUS_FORBID_SKIPS=1 $(SERVICES) run -- \
		$(PY) -m pytest --timeout=$(PYTEST_TIMEOUT) --durations=10 $(PYTEST_ARGS)

demo: venv services-up
	eval "$$($(SERVICES) env)" && $(PY) $(DEMO)
	@echo "services left running; stop them with: make services-down"
